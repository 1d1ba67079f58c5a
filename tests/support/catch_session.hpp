#pragma once
// The test runners' one call into Catch2, whose implementation (and its Session class) is compiled once, in
// support/catch_impl.cpp: Catch::Session().run(argc, argv).
namespace mp_test {
int run_catch_session(int argc, char** argv);
}
