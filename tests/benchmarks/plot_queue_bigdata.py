#!/usr/bin/env python3
"""Plots MB/s against item size for mp's Queue, Python's Queue and memcpy, from the large-item table that
compare_python.py prints (the "| Queue item | Python MB/s | mp MB/s | ..." table), with gnuplot (Debian's
gnuplot-nox; optional, not needed by the build or ctest).

Usage:
    python3 tests/benchmarks/compare_python.py build/default/tests/benchmarks/compare_mp > table.md
    python3 tests/benchmarks/plot_queue_bigdata.py table.md docs/queue_bigdata.png
"""

import shutil
import subprocess
import sys
import tempfile

SIZES = {"64KiB": 64 << 10, "1MiB": 1 << 20, "16MiB": 16 << 20, "64MiB": 64 << 20}


def number(text):
    return float(text.replace(",", ""))


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    if shutil.which("gnuplot") is None:
        print("gnuplot is not installed (apt-get install gnuplot-nox)", file=sys.stderr)
        return 1
    points = []
    with open(sys.argv[1]) as table:
        for line in table:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 5 and cells[0] in SIZES:
                # item | Python | mp | ratio | memcpy | ...
                points.append((SIZES[cells[0]], number(cells[1]), number(cells[2]), number(cells[4])))
    if not points:
        print("no large-item Queue table found in " + sys.argv[1], file=sys.stderr)
        return 1
    with tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False) as data:
        for size, python, mp, memcpy in sorted(points):
            data.write(f"{size / (1 << 20)} {python} {mp} {memcpy}\n")
    script = f"""
set terminal pngcairo size 800,500
set output '{sys.argv[2]}'
set title 'Queue throughput by item size (one producer, one consumer)'
set xlabel 'item size (MiB)'
set ylabel 'MB/s'
set logscale xy
set grid
set key top left
plot '{data.name}' using 1:4 with linespoints title 'memcpy (same run)', \\
     '{data.name}' using 1:3 with linespoints title 'mp::Queue', \\
     '{data.name}' using 1:2 with linespoints title 'Python multiprocessing.Queue'
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
