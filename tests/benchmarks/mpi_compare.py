#!/usr/bin/env python3
"""mp::mpi::Pool vs mpi4py.futures' MPIPoolExecutor vs mp::Pool, in one run on 3 ranks (rank 0 + 2 workers;
mp::Pool: 2 forked workers). Usage, from the repository root after building mpi_benchmark:

    /usr/bin/python3 tests/benchmarks/mpi_compare.py [build/default] [--before other/build]

--before runs that build's mpi_benchmark too, just before this one's, and shows it in a column of its own.

Rows: map of 100,000 trivial items (x + 1) at chunksize 12,500 (us/item, median of 5); map of 2,000 items at
chunksize 1 (us/item: mpi4py's default chunksize); one-at-a-time submit round trip (us: mean, median, 90th and 99th percentiles of 2,000); 16 tasks
each taking and returning a 16 MiB buffer (MB/s, 2 x 16 x 16 MiB / wall time). Needs python3-mpi4py for the
interpreter that runs the mpi4py half (/usr/bin/python3 on Debian)."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "3"]


def run(command):
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout
    values = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                values[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return values


def main():
    args = sys.argv[1:]
    before = None
    if "--before" in args:
        at = args.index("--before")
        before = args[at + 1]
        del args[at:at + 2]
    build = args[0] if args else "build/default"
    program = os.path.join(build, "tests", "benchmarks", "mpi_benchmark")
    if before is not None:
        mp_before = run(MPIRUN + [os.path.join(before, "tests", "benchmarks", "mpi_benchmark"), "mpi"])
    mp_mpi = run(MPIRUN + [program, "mpi"])
    mpi4py = run(MPIRUN + ["/usr/bin/python3", "-m", "mpi4py.futures", os.path.join(HERE, "mpi_compare_mpi4py.py")])
    mp_local = run([program, "local"])

    rows = [
        ("map, 100,000 items, chunksize 12,500 (us/item)", "map_us_per_item", False, 10),
        ("map, 2,000 items, chunksize 1 (us/item)", "map_chunk1_us_per_item", False, None),
        ("submit round trip, mean (us)", "round_trip_us", False, 10),
        ("submit round trip, median (us)", "round_trip_median_us", False, None),
        ("submit round trip, 90th percentile (us)", "round_trip_p90_us", False, None),
        ("submit round trip, 99th percentile (us)", "round_trip_p99_us", False, None),
        ("16 x 16 MiB in and out (MB/s)", "buffers_mb_per_s", True, 2),
    ]
    extra = " mp::mpi::Pool before |" if before is not None else ""
    print(f"| | mp::mpi::Pool |{extra} mpi4py.futures | mp::Pool (1 host) | mp::mpi vs mpi4py | target |")
    print("|---|---|" + ("---|" if before is not None else "") + "---|---|---|---|")
    for name, key, higher_better, target in rows:
        if key not in mp_mpi or key not in mpi4py:
            continue
        a, b, c = mp_mpi[key], mpi4py[key], mp_local.get(key, float("nan"))
        ratio = a / b if higher_better else b / a
        verdict = "" if target is None else (f">= {target}x: {'met' if ratio >= target else 'MISSED'}")
        shown_before = f" {mp_before.get(key, float('nan')):g} |" if before is not None else ""
        print(f"| {name} | {a:g} |{shown_before} {b:g} | {c:g} | {ratio:.1f}x | {verdict} |")


if __name__ == "__main__":
    main()
