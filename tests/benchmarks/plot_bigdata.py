#!/usr/bin/env python3
"""Plots MB/s against item size for every big-data transport (Pipe, Queue, Pool arguments, Pool results), for mp,
Python's multiprocessing and memcpy of the same size, from the table `compare_python.py --big` prints
("| transport | item | Python MB/s | mp MB/s | ..."), with gnuplot (Debian's gnuplot-nox; optional, not needed by
the build or ctest).

Usage:
    python3 tests/benchmarks/compare_python.py build/default/tests/benchmarks/compare_mp --big > table.md
    python3 tests/benchmarks/plot_bigdata.py table.md docs/bigdata.png
"""

import shutil
import subprocess
import sys
import tempfile

SIZES = {"64KiB": 64 << 10, "256KiB": 256 << 10, "1MiB": 1 << 20, "4MiB": 4 << 20, "16MiB": 16 << 20,
         "64MiB": 64 << 20}
TRANSPORTS = ["Pipe", "Queue", "Pool args", "Pool results"]


def number(text):
    return float(text.replace(",", ""))


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    if shutil.which("gnuplot") is None:
        print("gnuplot is not installed (apt-get install gnuplot-nox)", file=sys.stderr)
        return 1
    points = {t: [] for t in TRANSPORTS}
    with open(sys.argv[1]) as table:
        for line in table:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            # transport | item | Python | mp | ratio | memcpy | ...
            if len(cells) >= 6 and cells[0] in points and cells[1] in SIZES and cells[2] not in ("-", ""):
                points[cells[0]].append((SIZES[cells[1]], number(cells[2]), number(cells[3]), number(cells[5])))
    if not any(points.values()):
        print("no big-data table found in " + sys.argv[1], file=sys.stderr)
        return 1
    files = {}
    for transport, rows in points.items():
        with tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False) as data:
            for size, python, mp, memcpy in sorted(rows):
                data.write(f"{size / (1 << 20)} {python} {mp} {memcpy}\n")
            files[transport] = data.name
    plots = []
    for transport in TRANSPORTS:
        name = files[transport]
        plots.append(f"""
set title '{transport}'
plot '{name}' using 1:4 with linespoints title 'memcpy (same run)', \\
     '{name}' using 1:3 with linespoints title 'mp', \\
     '{name}' using 1:2 with linespoints title 'Python multiprocessing'
""")
    script = f"""
set terminal pngcairo size 1100,800
set output '{sys.argv[2]}'
set multiplot layout 2,2 title 'MB/s by item size (one producer, one consumer; Pool: 2 workers, chunksize 1)'
set xlabel 'item size (MiB)'
set ylabel 'MB/s'
set logscale xy
set grid
set key bottom right font ',8'
{''.join(plots)}
unset multiplot
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
