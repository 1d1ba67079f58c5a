// Shared by mp::mpi's test runner and tests.
#pragma once

/// How the test executable was launched: 3 under `mpirun -n 3`, 1 alone (0: not said).
extern int mp_test_expected_ranks;
