"""The mpi4py half of mpi_compare.py: MPIPoolExecutor on the 2 worker ranks of `mpirun -n 3 python3 -m
mpi4py.futures mpi_compare_mpi4py.py`. Prints the same "name value" lines as mpi_benchmark.cpp."""
import statistics
import time

from mpi4py.futures import MPIPoolExecutor


def inc(x):
    return x + 1


def echo(data):
    return data


def main():
    with MPIPoolExecutor() as pool:
        items = range(100_000)
        list(pool.map(inc, items, chunksize=12_500))  # warm-up
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            out = list(pool.map(inc, items, chunksize=12_500))
            runs.append(time.perf_counter() - start)
            assert out[-1] == 100_000
        print(f"map_us_per_item {statistics.median(runs) * 1e6 / len(items):.5f}")

        few = range(2_000)
        start = time.perf_counter()
        list(pool.map(inc, few, chunksize=1))
        print(f"map_chunk1_us_per_item {(time.perf_counter() - start) * 1e6 / len(few):.3f}")

        for i in range(200):
            pool.submit(inc, i).result()
        trips = 2_000
        trip = []
        start = time.perf_counter()
        for i in range(trips):
            one = time.perf_counter()
            pool.submit(inc, i).result()
            trip.append((time.perf_counter() - one) * 1e6)
        print(f"round_trip_us {(time.perf_counter() - start) * 1e6 / trips:.2f}")
        trip.sort()
        print(f"round_trip_median_us {trip[trips // 2]:.2f}")
        print(f"round_trip_p90_us {trip[trips * 9 // 10]:.2f}")
        print(f"round_trip_p99_us {trip[trips * 99 // 100]:.2f}")

        buffer = bytes(16 << 20)
        pool.submit(echo, buffer).result()
        start = time.perf_counter()
        futures = [pool.submit(echo, buffer) for _ in range(16)]
        moved = sum(len(f.result()) for f in futures)
        print(f"buffers_mb_per_s {2 * moved / 1e6 / (time.perf_counter() - start):.0f}")


if __name__ == "__main__":
    main()
