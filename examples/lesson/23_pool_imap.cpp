// Lesson "Pool.imap()": results are consumed lazily, in input order, as a range-for.
#include <cstdio>
#include <ranges>

#include <mp/pool.hpp>

int square(int x) { return x * x; }

int main(int argc, char** argv) {
  mp::init(argc, argv);
  mp::Pool pool;
  auto results = pool.imap(square, std::views::iota(0, 10));
  for (int result : results) std::printf("%d\n", result);
}
