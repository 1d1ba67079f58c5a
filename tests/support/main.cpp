// The one Catch2 runner of every test executable.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

// The whole library, so every test executable has two translation units that include every header: a function
// that is not `inline` fails to link.
#include <mp/mp.hpp>

int main(int argc, char** argv) {
  mp::init(argc, argv);  // a spawned child runs its target here and never returns
  return Catch::Session().run(argc, argv);
}
