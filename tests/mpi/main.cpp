// The runner of mp::mpi's tests: mp::init, then mp::mpi::init (worker ranks serve inside it and never reach the
// Catch session), then the tests on rank 0. `--expect-ranks N` says how it was launched (3: mpirun -n 3, 1: alone),
// so a test can check that its results came from the ranks it expects.
// Catch2's implementation, Session included: tests/support/catch_impl.cpp (library mp_test_catch).
#include "support/catch_session.hpp"

#include <mp/mp.hpp>
#include <mp/mpi.hpp>

#include <cstdlib>
#include <string>
#include <vector>

#include "mpi/support.hpp"

int mp_test_expected_ranks = 0;

int main(int argc, char** argv) {
  mp::init(argc, argv);
  mp::mpi::init(argc, argv);
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::string(argv[i]) == "--expect-ranks" && i + 1 < argc) {
      mp_test_expected_ranks = std::atoi(argv[++i]);
      continue;
    }
    args.push_back(argv[i]);
  }
  const int failed = mp_test::run_catch_session(static_cast<int>(args.size()), args.data());
  return failed < 0xff ? failed : 0xff;
}
