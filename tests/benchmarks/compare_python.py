#!/usr/bin/env python3
"""mp against Python's multiprocessing on the same workloads, in one table.

Runs each workload with Python's multiprocessing (fork start method, as mp's default), then runs the compare_mp
program (tests/benchmarks/compare_mp.cpp, built -O2 with the benchmarks) and prints a Markdown table:
mp vs Python with the ratio, and on the latency rows the raw OS baseline measured by compare_mp beside them.

Usage:
    python3 tests/benchmarks/compare_python.py BUILD/tests/benchmarks/compare_mp [--quick] [--big | --manager]

--big: only the big-data rows (Pipe round trip, big Pipe messages, Queue and Pool items), at 256 KiB and 4 MiB as
well; plot_bigdata.py plots its tables.
--manager: only the Manager rows (dict ops, list append, custom call, big values, 1/4/16 clients).

Targets (issue 8): mp at least 10x Python on every throughput and pool-overhead row; pipe round trip and process
start within 1.3x of the raw syscall baseline. Issue 14: big Pool items (pool_args_*, pool_results_*) at >= 2x
Python and >= 0.1x memcpy of the same size (measured by compare_mp in the same run); pool_chunksize1_<w>w with 64
workers at most 2x the 2-worker figure. Latency rows are the best of 5 batches, throughput rows the best
of 3 runs, on both sides. The whole run takes about a minute or two.
"""

import multiprocessing as mp
from multiprocessing.managers import BaseManager
import os
import subprocess
import sys
import threading
import time

ctx = mp.get_context("fork")


def best_us(batches, n, fn):
    """Lowest time per operation over the batches, in microseconds (the batch least disturbed by other load)."""
    best = float("inf")
    for _ in range(batches):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def median_us(batches, n, fn):
    """Median time per operation over the batches, in microseconds: for rows read as ratios (compare_mp.cpp's too)."""
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        fn(n)
        times.append((time.perf_counter() - t0) / n * 1e6)
    return sorted(times)[len(times) // 2]


def best_rate(runs, n, fn):
    best = 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(n)
        best = max(best, n / (time.perf_counter() - t0))
    return best


# ---- workloads (the same as compare_mp.cpp) ---------------------------------------------------------------------

def nothing():
    pass


def process_start_join(n):
    for _ in range(n):
        p = ctx.Process(target=nothing)
        p.start()
        p.join()


def echo(conn):
    while True:
        v = conn.recv()
        if v < 0:
            return
        conn.send(v)


def pipe_round_trip(n):
    here, there = ctx.Pipe()
    child = ctx.Process(target=echo, args=(there,))
    child.start()
    there.close()
    for i in range(n):
        here.send(i)
        if here.recv() != i:
            raise RuntimeError("pipe echo returned a wrong value")
    here.send(-1)
    child.join()


# Big messages through a Pipe (issue 14): send_bytes -> recv_bytes, MB/s; the same sizes and counts as compare_mp.
PIPE_BIG_SIZES = [("64KiB", 64 << 10, 4096), ("1MiB", 1 << 20, 256), ("16MiB", 16 << 20, 16), ("64MiB", 64 << 20, 4)]
MORE_SIZES = {"256KiB": (256 << 10, 1024, 512), "4MiB": (4 << 20, 64, 32)}  # --big: label: bytes, pipe n, pool n


def more_sizes():
    """--big: 256 KiB and 4 MiB rows beside the others, in size order."""
    global PIPE_BIG_SIZES, QUEUE_BIG_SIZES, BIG_SIZES
    PIPE_BIG_SIZES = sorted(PIPE_BIG_SIZES + [(k, v[0], v[1]) for k, v in MORE_SIZES.items()], key=lambda r: r[1])
    QUEUE_BIG_SIZES = sorted(QUEUE_BIG_SIZES + [(k, v[0]) for k, v in MORE_SIZES.items()], key=lambda r: r[1])
    BIG_SIZES = sorted(BIG_SIZES + [(k, v[0], v[2]) for k, v in MORE_SIZES.items()], key=lambda r: r[1])


def send_items(out, size, n):
    item = b"\x07" * size
    for _ in range(n):
        out.send_bytes(item)


def pipe_simplex_mb_per_s(size, n):
    reader, writer = ctx.Pipe()
    child = ctx.Process(target=send_items, args=(writer, size, n + 1))
    child.start()
    writer.close()
    if len(reader.recv_bytes()) != size:
        raise RuntimeError("pipe simplex: a wrong size")
    t0 = time.perf_counter()
    for _ in range(n):
        if len(reader.recv_bytes()) != size:
            raise RuntimeError("pipe simplex: a wrong size")
    rate = size * n / (time.perf_counter() - t0) / 1e6
    child.join()
    return rate


def produce(q, n, item):
    for _ in range(n):
        q.put(item)


def queue_throughput(n, item):
    q = ctx.Queue()
    producer = ctx.Process(target=produce, args=(q, n, item))
    producer.start()
    for _ in range(n):
        q.get()
    producer.join()


def produce_bytes(q, runs, size):
    """Makes its item once, then puts n of it for every run the consumer asks for (0: done), as compare_mp's."""
    item = b"\x07" * size  # in memory, as compare_mp's (bytes(size) would read the shared zero page)
    while (n := runs.get()) > 0:
        for _ in range(n):
            q.put(item)


def queue_bytes_rate(n, size):
    """Best of 3 runs of n items of `size` bytes from one child to this process through a default Queue, in
    items/s (one producer and one queue for the three runs, as compare_mp's)."""
    q, runs = ctx.Queue(), ctx.Queue()
    producer = ctx.Process(target=produce_bytes, args=(q, runs, size))
    producer.start()

    def run(n):
        runs.put(n)
        for _ in range(n):
            if len(q.get()) != size:
                raise RuntimeError("queue item of the wrong size")

    rate = best_rate(3, n, run)
    runs.put(0)
    producer.join()
    return rate


# Large Queue items (issue 14): label, bytes. 256 MiB per run at every size (a tenth with --quick).
QUEUE_BIG_SIZES = [("64KiB", 64 << 10), ("1MiB", 1 << 20), ("16MiB", 16 << 20), ("64MiB", 64 << 20)]


def identity(x):
    return x


def value_lock_worker(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def value_lock_increments(total):
    v = ctx.Value("q", 0)
    workers = [ctx.Process(target=value_lock_worker, args=(v, total // 2)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if v.value != total // 2 * 2:
        raise RuntimeError("Value+Lock lost increments")


def sum_of_squares(lo, hi):
    result = 0
    for i in range(lo, hi):
        result += i * i
    return result


def chunk_sum(chunk):
    return sum_of_squares(*chunk)


def chunk_into(out, w, lo, hi):
    out[w] = sum_of_squares(lo, hi) % 2**63


def cpu_speedups(quick):
    workers = mp.cpu_count()
    n = 1 << 16
    while True:  # calibrate: about 0.5 s of serial work (0.05 s with --quick)
        t0 = time.perf_counter()
        sum_of_squares(0, n)
        t = time.perf_counter() - t0
        if t > 0.05:
            n = int(n * (0.05 if quick else 0.5) / t)
            break
        n *= 4
    chunks = [(n * w // workers, n * (w + 1) // workers) for w in range(workers)]
    expected = sum_of_squares(0, n)
    serial = threads = processes = pool_time = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        if sum_of_squares(0, n) != expected:
            raise RuntimeError("serial")
        serial = min(serial, time.perf_counter() - t0)

        t0 = time.perf_counter()
        partial = [0] * workers

        def run(w):
            partial[w] = chunk_sum(chunks[w])

        ts = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        threads = min(threads, time.perf_counter() - t0)
        if sum(partial) != expected:
            raise RuntimeError("threads")

        t0 = time.perf_counter()
        out = ctx.Array("q", workers)
        ps = [ctx.Process(target=chunk_into, args=(out, w, *chunks[w])) for w in range(workers)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        processes = min(processes, time.perf_counter() - t0)
        if (sum(out) - expected) % 2**63 != 0:  # the 'q' slots hold the partial sums modulo 2**63
            raise RuntimeError("processes")

        t0 = time.perf_counter()
        with ctx.Pool(workers) as pool:
            parts = pool.map(chunk_sum, chunks, 1)
        pool_time = min(pool_time, time.perf_counter() - t0)
        if sum(parts) != expected:
            raise RuntimeError("pool")
    return {
        "cpu_speedup_threads": serial / threads,
        "cpu_speedup_processes": serial / processes,
        "cpu_speedup_pool": serial / pool_time,
    }


class Counter:
    """A custom shared type (mp: MP_REGISTER_TYPE(Counter, "Counter", &Counter::add))."""

    def __init__(self):
        self.total = 0

    def add(self, n):
        self.total += n
        return self.total


class CounterManager(BaseManager):
    pass


CounterManager.register("Counter", Counter)


class Echo:
    """A custom shared type whose method returns its argument (mp: MP_REGISTER_TYPE(Echo, "Echo", &Echo::echo))."""

    def echo(self, value):
        return value


CounterManager.register("Echo", Echo)


def timed_in_child(fn, n, conn):
    fn(1)  # the child's first call opens its connection to the server: not part of the per-call rate
    t0 = time.perf_counter()
    fn(n)
    conn.send(time.perf_counter() - t0)


def best_rate_in_child(runs, n, fn):
    """Best of `runs`: fn(n) run in a child process (as a worker would), n / its own elapsed time (after fn(1)
    warmed the child's connection up, as compare_mp does)."""
    best = 0.0
    for _ in range(runs):
        receiver, sender = ctx.Pipe(duplex=False)
        p = ctx.Process(target=timed_in_child, args=(fn, n, sender))
        p.start()
        seconds = receiver.recv()
        p.join()
        best = max(best, n / seconds)
    return best


BIG_SIZES = [("64KiB", 64 << 10, 2048), ("1MiB", 1 << 20, 128), ("16MiB", 16 << 20, 8), ("64MiB", 64 << 20, 4)]


def make_bytes(n):
    return bytes(n)


def pool_big_items(report, s):
    """pool_args_<size> (map(len, items, 1)) and pool_results_<size> (map(make_bytes, sizes, 1)) in MB/s."""
    with ctx.Pool(2) as pool:
        pool.map(len, [b"", b""], 1)
        for label, size, items in BIG_SIZES:
            items = max(2, items // s)
            data = [b"x" * size for _ in range(items)]
            rate = best_rate(3, items, lambda n: pool.map(len, data, 1))
            report(f"pool_args_{label}", rate * size / 1e6)
            del data
            rate = best_rate(3, items, lambda n: pool.map(make_bytes, [size] * n, 1))
            report(f"pool_results_{label}", rate * size / 1e6)


def pool_chunksize1_by_workers(report, s):
    for workers in (2, 8, 32, 64):
        with ctx.Pool(workers) as pool:
            pool.map(identity, [1] * (2 * workers), 1)
            report(f"pool_chunksize1_{workers}w", median_us(9, 5000 // s, lambda n: pool.map(identity, [7] * n, 1)))


# ---- Manager big values and many clients (issue 14; helper mgr3's block) ----------------------------------------

MANAGER_VALUE_SIZES = [("64KiB", 64 << 10), ("1MiB", 1 << 20), ("16MiB", 16 << 20), ("64MiB", 64 << 20)]
MANAGER_CLIENTS = (1, 4, 16)


def manager_value_rows(report, s):
    """manager_value_<size>: MB/s of dict set + get pairs of a bytes value (2 x size per pair), as compare_mp."""
    with ctx.Manager() as manager:
        d = manager.dict()
        for label, size in MANAGER_VALUE_SIZES:
            n = max(2, (256 << 20) // size // s // 2)
            value = bytes(size)
            d["value"] = value

            def pairs(count):
                for _ in range(count):
                    d["value"] = value
                    if len(d["value"]) != size:
                        raise RuntimeError("manager value")

            report(f"manager_value_{label}", best_rate(3, n, pairs) * 2 * size / 1e6)
    # manager_queue_<size>, manager_custom_<size>: queue put + get pairs, custom calls returning their argument.
    with CounterManager(ctx=ctx) as custom:
        echo = custom.Echo()
        for label, size in MANAGER_VALUE_SIZES:
            n = max(2, (256 << 20) // size // s // 2)
            value = bytes(size)

            def calls(count):
                for _ in range(count):
                    if len(echo.echo(value)) != size:
                        raise RuntimeError("manager custom result")

            report(f"manager_custom_{label}", best_rate(3, n, calls) * 2 * size / 1e6)
    with ctx.Manager() as manager:
        q = manager.Queue()
        for label, size in MANAGER_VALUE_SIZES:
            n = max(2, (256 << 20) // size // s // 2)
            value = bytes(size)

            def queue_pairs(count):
                for _ in range(count):
                    q.put(value)
                    if len(q.get()) != size:
                        raise RuntimeError("manager queue item")

            report(f"manager_queue_{label}", best_rate(3, n, queue_pairs) * 2 * size / 1e6)


def dict_client(d, key, n, go, done):
    d[key] = 0
    go.wait()
    t0 = time.perf_counter()
    for i in range(0, n, 2):
        d[key] = i
        if d[key] != i:
            raise RuntimeError("manager dict")
    done.put(time.perf_counter() - t0)


def manager_clients_rows(report, s):
    """manager_dict_ops_<k>clients: k children doing dict set + get on their own key at once; all ops over the
    slowest child's time (each child connects before the start signal), as compare_mp."""
    with ctx.Manager() as manager:
        d = manager.dict()
        for clients in MANAGER_CLIENTS:
            best = 0.0
            n = 4000 // s
            for _ in range(3):
                go, done = ctx.Event(), ctx.Queue()
                ps = [ctx.Process(target=dict_client, args=(d, f"client-{c}", n, go, done)) for c in range(clients)]
                for p in ps:
                    p.start()
                go.set()
                slowest = max(done.get() for _ in ps)
                for p in ps:
                    p.join()
                best = max(best, n * clients / slowest)
            report(f"manager_dict_ops_{clients}clients", best)


MANAGER_ROWS = [
    (f"manager_{kind}_{label}", "MB/s", "rate", f"manager_value_memcpy_{label}", "big")
    for label, _ in MANAGER_VALUE_SIZES
    for kind in ("value", "queue", "custom")
] + [(f"manager_dict_ops_{k}clients", "ops/s", "rate", None, "10x") for k in MANAGER_CLIENTS]

# ---- end of helper mgr3's block ----------------------------------------------------------------------------------


def python_rows(quick, big=False, manager_only=False):
    s = 10 if quick else 1
    rows = {}

    def report(name, value):
        rows[name] = value
        print(f"  python {name} {value:.6g}", file=sys.stderr, flush=True)

    if manager_only:
        manager_rows(report, s)
        return rows
    if not big:
        report("process_start_join", best_us(5, 50 // s, process_start_join))
    report("pipe_round_trip", best_us(5, 5000 // s, pipe_round_trip))
    for name, size, n in PIPE_BIG_SIZES:
        report(f"pipe_simplex_{name}", max(pipe_simplex_mb_per_s(size, max(2, n // s)) for _ in range(3)))
    if big:
        for label, size in QUEUE_BIG_SIZES:
            n = max(1, (256 << 20) // size // s)
            report(f"queue_{label}_MBps", queue_bytes_rate(n, size) * size / 1e6)
        pool_big_items(report, s)
        return rows
    report("queue_8B", best_rate(3, 50000 // s, lambda n: queue_throughput(n, 42)))
    report("queue_1KiB", best_rate(3, 50000 // s, lambda n: queue_throughput(n, b"x" * 1024)))
    for label, size in QUEUE_BIG_SIZES:
        n = max(1, (256 << 20) // size // s)
        report(f"queue_{label}_MBps", queue_bytes_rate(n, size) * size / 1e6)
    with ctx.Pool() as pool:
        pool.map(identity, range(4))
        report("pool_map_auto", best_us(5, 1000000 // s, lambda n: pool.map(identity, range(n))))
        report("pool_map_chunksize1", best_us(5, 5000 // s, lambda n: pool.map(identity, [7] * n, 1)))

        def apply_loop(n):
            for i in range(n):
                if pool.apply_async(identity, (i,)).get() != i:
                    raise RuntimeError("apply_async")

        report("apply_async_round_trip", best_us(5, 2000 // s, apply_loop))
    pool_big_items(report, s)
    pool_chunksize1_by_workers(report, s)
    report("value_lock_increments", best_rate(3, 400000 // s, value_lock_increments))
    manager_rows(report, s)
    for name, value in cpu_speedups(quick).items():
        report(name, value)
    return rows


def manager_rows(report, s):
    with ctx.Manager() as manager:
        d = manager.dict()

        def dict_ops(n):
            for i in range(0, n, 2):
                d["key"] = i
                if d.get("key") != i:
                    raise RuntimeError("manager dict")

        report("manager_dict_ops", best_rate(3, 4000 // s, dict_ops))
        l = manager.list()

        def list_appends(n):
            for i in range(n):
                l.append(i)

        report("manager_list_append", best_rate_in_child(3, 4000 // s, list_appends))
    with CounterManager(ctx=ctx) as custom:
        counter = custom.Counter()

        def custom_calls(n):
            for _ in range(n):
                counter.add(1)

        report("manager_custom_call", best_rate_in_child(3, 4000 // s, custom_calls))
    manager_value_rows(report, s)
    manager_clients_rows(report, s)


def mp_rows(program, quick, big=False, manager_only=False):
    cmd = [program] + (["--quick"] if quick else []) + (["--big"] if big else []) + (["--manager"] if manager_only else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        name, value, _unit = line.split()
        rows[name] = float(value)
    return rows


# name, unit, kind ("latency": lower is better; "rate": higher is better; "speedup"), raw baseline row, target
ROWS = [
    ("process_start_join", "us", "latency", "raw_fork_waitpid", "raw"),
    ("pipe_round_trip", "us", "latency", "raw_socketpair_round_trip", "raw"),
    ("queue_8B", "items/s", "rate", None, "10x"),
    ("queue_1KiB", "items/s", "rate", None, "10x"),
    ("pool_map_auto", "us/item", "latency", None, "10x"),
    ("pool_map_chunksize1", "us/item", "latency", None, "10x"),
    ("apply_async_round_trip", "us", "latency", None, "10x"),
    ("value_lock_increments", "ops/s", "rate", None, "10x"),
    ("manager_dict_ops", "ops/s", "rate", None, "10x"),
    ("manager_list_append", "ops/s", "rate", None, "10x"),
    ("manager_custom_call", "calls/s", "rate", None, "10x"),
] + [
    (f"pool_{kind}_{label}", "MB/s", "rate", f"memcpy_{label}", "big")
    for label, _, _ in BIG_SIZES for kind in ("args", "results")
] + [
    (f"pool_chunksize1_{w}w", "us/item", "latency", "pool_chunksize1_2w", "scale") for w in (2, 8, 32, 64)
] + [
    ("cpu_speedup_threads", "x", "speedup", None, None),
    ("cpu_speedup_processes", "x", "speedup", None, None),
    ("cpu_speedup_pool", "x", "speedup", None, None),
] + MANAGER_ROWS


def fmt(v):
    if v >= 1e5:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"  # three significant digits: 0.0047 us/item must not print as 0.00


def main():
    args = [a for a in sys.argv[1:] if a not in ("--quick", "--big", "--manager")]
    quick = "--quick" in sys.argv[1:]
    big = "--big" in sys.argv[1:]
    manager_only = "--manager" in sys.argv[1:]  # the Manager rows only (the others print as missing)
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    if big:
        more_sizes()
    print("measuring Python's multiprocessing ...", file=sys.stderr, flush=True)
    py = python_rows(quick, big, manager_only)
    print("measuring mp ...", file=sys.stderr, flush=True)
    cpp = mp_rows(args[0], quick, big, manager_only)
    if big:
        return big_data_tables(py, cpp)

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"cpu_count = {mp.cpu_count()}, Python {sys.version.split()[0]}, fork start method on both sides, "
          f"load average {load} (1/5/15 min) at the end of the run")
    print()
    print("| benchmark | unit | Python | mp | mp vs Python | raw OS baseline | mp / raw | target | met |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    met = missed = 0
    for name, unit, kind, raw, target in ROWS:
        p, m = py.get(name), cpp.get(name)
        if p is None or m is None:
            print(f"| {name} | {unit} | {fmt(p) if p else '-'} | {fmt(m) if m else '-'} | | | | | missing |")
            missed += 1
            continue
        if kind == "latency":
            factor = p / m
        else:
            factor = m / p
        factor_text = f"{factor:.1f}x faster" if kind != "speedup" else f"{m:.2f} vs {p:.2f}"
        raw_text = ratio_text = ""
        ok = None
        if target == "big" and raw in cpp:
            # Issue 14: >= 2x Python and >= 0.1x memcpy of the same size in the same run.
            raw_text = fmt(cpp[raw])
            ratio = m / cpp[raw]
            ratio_text = f"{ratio:.3f}"
            ok = factor >= 2 and ratio >= 0.1
            target_text = ">= 2x Python, >= 0.1x memcpy"
        elif target == "scale" and raw in cpp:
            # Issue 14: chunksize=1 with many workers on few CPUs costs at most 2x its 2-worker figure.
            raw_text = fmt(cpp[raw])
            ratio = m / cpp[raw]
            ratio_text = f"{ratio:.2f}"
            ok = ratio <= 2
            target_text = "<= 2x 2 workers"
        elif raw and raw in cpp:
            raw_text = fmt(cpp[raw])
            ratio = m / cpp[raw]
            ratio_text = f"{ratio:.2f}"
            ok = ratio <= 1.3
            target_text = "<= 1.3x raw"
        elif target == "10x":
            ok = factor >= 10
            target_text = ">= 10x Python"
        else:
            target_text = ""
        met_text = "" if ok is None else ("yes" if ok else "NO")
        if ok is True:
            met += 1
        elif ok is False:
            missed += 1
        print(f"| {name} | {unit} | {fmt(p)} | {fmt(m)} | {factor_text} | {raw_text} | {ratio_text} | "
              f"{target_text} | {met_text} |")
    print()
    print("Big messages (MB/s, higher is better; memcpy of the same size, and fresh memory: mmap + memset + munmap of")
    print("the same size, measured in the mp run):")
    print()
    print("| benchmark | Python | mp | mp vs Python | memcpy | mp / memcpy | fresh memory | target | met |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for name, size, _n in PIPE_BIG_SIZES:
        row = f"pipe_simplex_{name}"
        p, m, c = py.get(row), cpp.get(row), cpp.get(f"pipe_simplex_memcpy_{name}")
        if p is None or m is None or c is None:
            print(f"| {row} | {fmt(p) if p else '-'} | {fmt(m) if m else '-'} | | | | | | missing |")
            missed += 1
            continue
        text = ok = ""
        if size >= 1 << 20:  # the targets of issue 14 are for 1 MiB and up
            text = ">= 2x Python, >= 0.1x memcpy"
            good = m >= 2 * p and m >= 0.1 * c
            ok = "yes" if good else "NO"
            met, missed = (met + 1, missed) if good else (met, missed + 1)
        f = cpp.get(f"pipe_simplex_fresh_memory_{name}")
        print(f"| {row} | {fmt(p)} | {fmt(m)} | {m / p:.1f}x | {fmt(c)} | {m / c:.2f} | {fmt(f) if f else '-'} | "
              f"{text} | {ok} |")
    print()
    print(f"targets met: {met} of {met + missed}")
    print()
    big_table(py, cpp)
    return 0


def big_data_tables(py, cpp):
    """--big: one table of MB/s per transport and size (mp, Python, memcpy of the same run), and the round trip."""
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"cpu_count = {mp.cpu_count()}, Python {sys.version.split()[0]}, fork start method on both sides, "
          f"load average {load} (1/5/15 min) at the end of the run")
    print()
    print("| transport | item | Python MB/s | mp MB/s | mp vs Python | memcpy MB/s | mp / memcpy | target | met |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    rows = [("Pipe", label, size, f"pipe_simplex_{label}", f"pipe_simplex_memcpy_{label}") for label, size, _ in PIPE_BIG_SIZES]
    rows += [("Queue", label, size, f"queue_{label}_MBps", f"memcpy_{label}_MBps") for label, size in QUEUE_BIG_SIZES]
    rows += [(f"Pool {kind}", label, size, f"pool_{kind}_{label}", f"memcpy_{label}")
             for kind in ("args", "results") for label, size, _ in BIG_SIZES]
    for transport, label, size, name, copy in rows:
        p, m, c = py.get(name), cpp.get(name), cpp.get(copy)
        if p is None or m is None or c is None:
            print(f"| {transport} | {label} | {fmt(p) if p else '-'} | {fmt(m) if m else '-'} | | | | | missing |")
            continue
        target = size >= 1 << 20
        ok = m >= 2 * p and m >= 0.1 * c
        print(f"| {transport} | {label} | {fmt(p)} | {fmt(m)} | {m / p:.2f}x | {fmt(c)} | {m / c:.3f} | "
              f"{'>= 2x Python, >= 0.1x memcpy' if target else 'not slower than Python'} | "
              f"{('yes' if ok else 'NO') if target else ('yes' if m >= p else 'NO')} |")
    print()
    p, m, raw = py.get("pipe_round_trip"), cpp.get("pipe_round_trip"), cpp.get("raw_socketpair_round_trip")
    if p and m and raw:
        print(f"Pipe round trip: Python {fmt(p)} us, mp {fmt(m)} us ({m / p:.2f}x Python's; target <= 0.1x), "
              f"raw socketpair {fmt(raw)} us")
    return 0


def big_table(py, cpp):
    """Large Queue items: MB/s of mp and Python, memcpy of the same size measured by compare_mp in the same run.
    Targets (issue 14) from 1 MiB up: >= 2x Python and >= 0.1x memcpy."""
    print("| Queue item | Python MB/s | mp MB/s | mp vs Python | memcpy MB/s | mp / memcpy | target | met |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for label, size in QUEUE_BIG_SIZES:
        p, m, c = py.get(f"queue_{label}_MBps"), cpp.get(f"queue_{label}_MBps"), cpp.get(f"memcpy_{label}_MBps")
        if p is None or m is None or c is None:
            print(f"| {label} | {fmt(p) if p else '-'} | {fmt(m) if m else '-'} | | | | | missing |")
            continue
        target = size >= 1 << 20
        ok = m >= 2 * p and m >= 0.1 * c
        print(f"| {label} | {fmt(p)} | {fmt(m)} | {m / p:.1f}x | {fmt(c)} | {m / c:.3f} | "
              f"{'>= 2x Python, >= 0.1x memcpy' if target else ''} | {('yes' if ok else 'NO') if target else ''} |")


if __name__ == "__main__":
    sys.exit(main())
