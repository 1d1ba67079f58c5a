// A separate project using mp::mpi (built when its mp has the target): launched alone, its pool spawns one worker.
#include <mp/mpi.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  mp::mpi::init(argc, argv);
  mp::mpi::Pool pool(1);
  std::printf("consumer_mpi: %d from rank %d\n", pool.apply([](int x) { return x * 6; }, 7),
              pool.apply([] { return mp::mpi::rank(); }));
}
