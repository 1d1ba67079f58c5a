#!/usr/bin/env python3
"""SharedHeap containers against mp's Manager dict and Python's Manager dict, in one table.

Measures Python's Manager dict on the workload of shared_heap_benchmark's first map row (2 processes released
together by a Barrier, each doing rounds of `d[k] = i` then `d[k]` over its own 1000 keys; ops/s counts both; best
of 3 runs; fork start method, as mp's default), then runs shared_heap_benchmark --rows (the same on a shm::map under
an mp::Lock and on an mp Manager dict; the same with every key new; a shm::vector<double> sum against an mp::Array
sum; kills during allocation) and prints Markdown tables.

Usage:
    python3 tests/benchmarks/shared_heap_compare.py BUILD/tests/benchmarks/shared_heap_benchmark [--quick]

Targets (issue 18): the SharedHeap map at least 10x the mp Manager dict and 100x Python's Manager dict.
"""

import multiprocessing as mp
import os
import subprocess
import sys
import time

ctx = mp.get_context("fork")


def dict_work(w, d, n, barrier, ends):
    barrier.wait()
    for i in range(n):
        key = w * 1000 + i % 1000
        d[key] = i
        if d[key] != i:
            raise RuntimeError("manager dict")
    ends[w] = time.time()


def python_manager_dict_rate(n):
    best = float("inf")
    with ctx.Manager() as manager:
        for _ in range(3):
            d = manager.dict()
            barrier = ctx.Barrier(3)
            ends = ctx.Array("d", 2)
            ps = [ctx.Process(target=dict_work, args=(w, d, n, barrier, ends)) for w in range(2)]
            for p in ps:
                p.start()
            barrier.wait()
            begin = time.time()
            for p in ps:
                p.join()
                if p.exitcode != 0:
                    raise RuntimeError("a worker failed")
            best = min(best, max(ends[0], ends[1]) - begin)
            if len(d) != 2 * min(n, 1000):
                raise RuntimeError("manager dict size")
    return 4 * n / best


def mp_rows(program, quick):
    cmd = [program, "--rows"] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        name, value, unit = line.split()
        rows[name] = float(value)
        if name == "kills_breaking_heap":
            rows["kills"] = float(unit.split("_")[1])
    return rows


def main():
    args = [a for a in sys.argv[1:] if a != "--quick"]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    quick = "--quick" in sys.argv
    print("measuring Python's Manager dict ...", file=sys.stderr, flush=True)
    python_dict = python_manager_dict_rate(200 if quick else 2000)
    print("measuring mp ...", file=sys.stderr, flush=True)
    rows = mp_rows(args[0], quick)
    heap, manager = rows["heap_map_ops"], rows["manager_dict_ops"]
    load = os.getloadavg()
    print(f"cpu_count = {mp.cpu_count()}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, "
          f"Python {sys.version.split()[0]}, fork start method, 2 processes, best of 3 runs")
    print()
    print("| workload | unit | SharedHeap | mp Manager dict | Python Manager dict | vs mp Manager | vs Python | targets |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    verdict = (f">= 10x: {'met' if heap >= 10 * manager else 'missed'}, "
               f">= 100x: {'met' if heap >= 100 * python_dict else 'missed'}")
    print(f"| map<int,int> set+find, 1000 keys per process (heap: under an mp::Lock) | ops/s | {heap:.3g} | "
          f"{manager:.3g} | {python_dict:.3g} | {heap / manager:.1f}x | {heap / python_dict:.0f}x | {verdict} |")
    alone = rows["heap_map_one_process_ops"]
    print(f"| the same by 1 process (heap only: no contention for the lock) | ops/s | {alone:.3g} | {manager:.3g} | "
          f"{python_dict:.3g} | {alone / manager:.1f}x | {alone / python_dict:.0f}x | |")
    growing, manager_growing = rows["heap_map_growing_ops"], rows["manager_dict_growing_ops"]
    print(f"| map<int,int> set+find, every key new (heap: 400k nodes) | ops/s | {growing:.3g} | "
          f"{manager_growing:.3g} | - | {growing / manager_growing:.1f}x | {growing / python_dict:.0f}x | |")
    print()
    print("| workload | unit | shm::vector<double> | mp::Array<double> | ratio |")
    print("|---|---|---:|---:|---:|")
    print(f"| sum by 2 processes | elements/s | {rows['heap_vector_sum']:.3g} | {rows['array_sum']:.3g} | "
          f"{rows['heap_vector_sum'] / rows['array_sum']:.2f}x |")
    print()
    print(f"A child SIGKILLed at an arbitrary instant while allocating left the heap broken {rows['kills_breaking_heap']:.0f} "
          f"times in {rows['kills']:.0f}.")


if __name__ == "__main__":
    main()
