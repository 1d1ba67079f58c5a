// A lambda capturing a std::string cannot be sent to a pool worker: the error names the fix.
// expect: mp::Pool: this callable cannot be sent to a worker process
// expect: pass other data as arguments
#include <mp/pool.hpp>

#include <string>

void submit(mp::Pool& pool) {
  std::string prefix = "item ";
  auto result = pool.apply_async([prefix](int x) { return prefix + std::to_string(x); }, 1);
  (void)result;
}
