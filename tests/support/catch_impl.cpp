// Catch2's implementation, compiled once per build (STATIC library mp_test_catch) for every test runner:
// support/main.cpp and tests/mpi/main.cpp only write main(). Compiling it takes about as long as a whole test, so
// each runner compiling its own copy cost one test's build time per runner.
#define CATCH_CONFIG_RUNNER
// Catch2's handlers for fatal signals would be inherited by every forked child: a child that gets SIGTERM from
// terminate() before its target has run would report a "fatal error" of the test and run Catch's code instead of
// dying. Without them, a crash ends the test executable by that signal, which ctest reports as a failure.
#define CATCH_CONFIG_NO_POSIX_SIGNALS
#include <catch2/catch.hpp>

#include "support/catch_session.hpp"

int mp_test::run_catch_session(int argc, char** argv) { return Catch::Session().run(argc, argv); }
