// The lesson's "Parallel Computation" (Example 1) and its "distributed computation" challenge on MPI: the same
// Pool code as on one machine, with the worker processes being MPI ranks, on this host or across a cluster.
//
//   mpirun -n 3 ./mpi_pool                     rank 0 runs main, ranks 1 and 2 are the pool's workers
//   mpirun -n 9 --hostfile hosts ./mpi_pool    8 workers over the hosts listed in `hosts` (see docs/mpi.md)
//   srun -n 9 ./mpi_pool                       the same under Slurm
//   ./mpi_pool                                 alone: the pool spawns cpu_count() workers (MPI_Comm_spawn)
//
// Python's version: `with multiprocessing.Pool() as pool: results = pool.map(compute_square, numbers)`.
#include <chrono>
#include <cstdint>
#include <iostream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <mp/mp.hpp>
#include <mp/mpi.hpp>

namespace {

__extension__ typedef unsigned __int128 uint128;  // the sums pass 2^64 as Python's integers do

/// CPU-bound computation (the lesson's compute_square); the exact sum in decimal.
std::string compute_square(std::int64_t n) {
  uint128 result = 0;
  for (std::int64_t i = 0; i < n; ++i) result += static_cast<uint128>(i) * static_cast<uint128>(i);
  std::string digits;
  do {
    digits.insert(digits.begin(), static_cast<char>('0' + static_cast<int>(result % 10)));
    result /= 10;
  } while (result != 0);
  return digits;
}

/// The challenge's job: count the primes below `limit`; returns the count and the rank that did it.
std::pair<std::int64_t, int> count_primes(std::int64_t limit) {
  std::vector<bool> composite(static_cast<std::size_t>(limit > 2 ? limit : 2), false);
  std::int64_t count = 0;
  for (std::int64_t n = 2; n < limit; ++n) {
    if (composite[static_cast<std::size_t>(n)]) continue;
    ++count;
    for (std::int64_t m = n * n; m < limit; m += n) composite[static_cast<std::size_t>(m)] = true;
  }
  return {count, mp::mpi::rank()};
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  mp::mpi::init(argc, argv);  // worker ranks serve inside this call; rank 0 goes on

  // Example 1: Parallel Computation.
  const std::vector<std::int64_t> numbers{1000000, 2000000, 3000000, 4000000};
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::string> results;
  {
    mp::mpi::Pool pool;
    results = pool.map(compute_square, numbers);
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  std::cout << "Results: [";
  for (std::size_t i = 0; i < results.size(); ++i) std::cout << (i ? ", " : "") << results[i];
  std::cout << "]\nTime: " << elapsed.count() << "s\n";

  // The challenge: a distributed computation — jobs go out to the ranks as they free up, results come back in
  // completion order, and rank 0 checks each against its own computation.
  mp::mpi::Pool pool;
  std::vector<std::int64_t> limits;
  for (std::int64_t k = 1; k <= 12; ++k) limits.push_back(20'000 * k);
  std::map<int, int> jobs_per_rank;
  int checked = 0;
  auto job = [](std::int64_t limit) { return std::pair(limit, count_primes(limit)); };
  for (const auto& [limit, answer] : pool.imap_unordered(job, limits)) {
    if (answer.first != count_primes(limit).first) {
      std::cerr << "wrong result for limit " << limit << "\n";
      return 1;
    }
    ++jobs_per_rank[answer.second];
    ++checked;
  }
  std::cout << "Distributed: " << checked << " jobs checked, done by " << jobs_per_rank.size() << " rank(s) of "
            << pool.processes() << "\n";
  return checked == static_cast<int>(limits.size()) ? 0 : 1;
}
