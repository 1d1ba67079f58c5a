// The one Catch2 runner of every test executable.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <mp/context.hpp>

int main(int argc, char** argv) {
  mp::init(argc, argv);  // a spawned child runs its target here and never returns
  return Catch::Session().run(argc, argv);
}
