#!/usr/bin/env python3
"""What mp costs to compile, against the standard library, in one Markdown table.

Rows (each the median of N runs, every ratio measured in the same run):
  - the README's first example (extracted from README.md's first ```cpp block, so the row follows the README),
    compiled and linked with -O2, against the same program written with std::thread/std::async only
    (tests/benchmarks/compile_time/readme_std_only.cpp);
  - `#include <mp/mp.hpp>` with -fsyntax-only against the standard headers a program like mp's users' includes
    anyway (STD_HEADERS below);
  - each public header alone, -fsyntax-only, against the same standard headers.
Each mp row twice: header-only, and separately compiled (-DMP_SEPARATE_COMPILATION, mp's one source prebuilt into
an object file first, which is not counted: a project compiles it once).

Usage:
    python3 tests/benchmarks/compile_time.py [--cxx g++] [--runs 3] [--clock cpu|wall] [--rows readme,umbrella,headers]

Times are CPU seconds (user + system of the compiler and everything it runs) by default: on a loaded machine they
move far less than wall time. Targets (issue 13): README example <= 3x, <mp/mp.hpp> <= 2x, header-only.
Run it on a quiet machine; with the default 3 runs it takes about three minutes.
"""

import argparse
import datetime
import os
import pathlib
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
STD_HEADERS = [
    "algorithm", "array", "atomic", "chrono", "condition_variable", "deque", "exception", "filesystem",
    "functional", "future", "iostream", "list", "map", "memory", "mutex", "optional", "ranges", "set", "span",
    "string", "string_view", "thread", "tuple", "unordered_map", "unordered_set", "utility", "variant", "vector",
]
TARGETS = {"readme": 3.0, "umbrella": 2.0}


def readme_example(readme: pathlib.Path) -> str:
    match = re.search(r"^```cpp\n(.*?)^```", readme.read_text(), re.S | re.M)
    if not match:
        sys.exit(f"{readme}: no ```cpp block")
    return match.group(1)


def timed(command, clock):
    """Seconds one run of `command` takes; exits with the compiler's output if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, command))}\n{done.stdout}")
    if clock == "wall":
        return wall
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cxx", default=os.environ.get("CXX", "g++"), help="compiler (default: $CXX or g++)")
    parser.add_argument("--runs", type=int, default=3, help="runs per row, the median is shown (>= 3)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--rows", default="readme,umbrella,headers", help="which rows: readme,umbrella,headers")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")
    args = parser.parse_args()
    if args.runs < 3:
        sys.exit("--runs: at least 3")
    rows = set(args.rows.split(","))
    if not rows <= {"readme", "umbrella", "headers"}:
        sys.exit("--rows: a comma-separated list of readme, umbrella, headers")

    include = ROOT / "include"
    work = pathlib.Path(tempfile.mkdtemp(prefix="mp-compile-time-"))
    cxx = [args.cxx, "-std=c++20", f"-I{include}"]
    separate = ["-DMP_SEPARATE_COMPILATION"]
    link = ["-pthread", "-ldl"]

    (work / "readme.cpp").write_text(readme_example(ROOT / "README.md"))
    std_only = ROOT / "tests/benchmarks/compile_time/readme_std_only.cpp"
    (work / "std_headers.cpp").write_text("".join(f"#include <{h}>\n" for h in STD_HEADERS))
    (work / "umbrella.cpp").write_text("#include <mp/mp.hpp>\n")
    headers = sorted(p.name for p in include.glob("mp/*.hpp") if p.name != "mp.hpp")  # mp.hpp: its own row
    for h in headers:
        (work / f"header_{h}.cpp").write_text(f"#include <mp/{h}>\n")

    # mp's one source for the separately compiled rows, built once with the same flags (not counted).
    library = work / "mp_compiled.o"
    (work / "mp_compiled.cpp").write_text("#include <mp/impl/src.hpp>\n")
    library_seconds = None
    if "readme" in rows:
        library_seconds = timed(cxx + separate + ["-O2", "-c", work / "mp_compiled.cpp", "-o", library], args.clock)

    # (key, command); every run executes each command once, in this order, so drift in the machine's load falls
    # on all rows alike.
    commands = []
    syntax = ["-fsyntax-only"]
    if "readme" in rows:
        commands += [
            ("readme", cxx + ["-O2", work / "readme.cpp", "-o", work / "readme"] + link),
            ("readme_sep", cxx + separate + ["-O2", work / "readme.cpp", library, "-o", work / "readme_sep"] + link),
            ("readme_std", cxx + ["-O2", std_only, "-o", work / "readme_std"] + link),
        ]
    if rows & {"umbrella", "headers"}:
        commands.append(("std_headers", cxx + syntax + [work / "std_headers.cpp"]))
    if "umbrella" in rows:
        commands += [
            ("umbrella", cxx + syntax + [work / "umbrella.cpp"]),
            ("umbrella_sep", cxx + syntax + separate + [work / "umbrella.cpp"]),
        ]
    if "headers" in rows:
        for h in headers:
            commands += [
                (f"header:{h}", cxx + syntax + [work / f"header_{h}.cpp"]),
                (f"header_sep:{h}", cxx + syntax + separate + [work / f"header_{h}.cpp"]),
            ]

    samples = {key: [] for key, _ in commands}
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs} ...", file=sys.stderr, flush=True)
        for key, command in commands:
            samples[key].append(timed(command, args.clock))
    t = {key: statistics.median(values) for key, values in samples.items()}

    version = subprocess.run([args.cxx, "--version"], stdout=subprocess.PIPE, text=True).stdout.splitlines()[0]
    unit = "CPU seconds (user + system)" if args.clock == "cpu" else "wall seconds"
    print(f"### Compile time: {version}, median of {args.runs} runs, {unit}")
    print()
    print(f"{datetime.date.today()}, load average {os.getloadavg()[0]:.2f} at the end. \"separately compiled\": "
          "`-DMP_SEPARATE_COMPILATION` and mp's one source (`<mp/impl/src.hpp>`, mp::mp_compiled) prebuilt, "
          "not counted" + (f" (it takes {library_seconds:.1f} s, once)." if library_seconds is not None else "."))
    print()
    print("| What | header-only | ratio | separately compiled | ratio | reference |")
    print("|---|--:|--:|--:|--:|---|")

    def row(what, key, reference_key, reference_text):
        ref = t[reference_key]
        print(f"| {what} | {t[key]:.2f} s | {t[key] / ref:.1f}x | {t[key + '_sep']:.2f} s | "
              f"{t[key + '_sep'] / ref:.1f}x | {ref:.2f} s: {reference_text} |")

    std_text = f"the {len(STD_HEADERS)} standard headers below, -fsyntax-only"
    if "readme" in rows:
        row("README example, `-O2`, compile + link", "readme", "readme_std", "the same with std::thread/std::async")
    if "umbrella" in rows:
        row("`#include <mp/mp.hpp>`, `-fsyntax-only`", "umbrella", "std_headers", std_text)
    if "headers" in rows:
        for h in headers:
            ref = t["std_headers"]
            print(f"| `<mp/{h}>` alone | {t['header:' + h]:.2f} s | {t['header:' + h] / ref:.1f}x | "
                  f"{t['header_sep:' + h]:.2f} s | {t['header_sep:' + h] / ref:.1f}x | the standard headers |")
    print()
    print("Standard headers: " + " ".join(f"<{h}>" for h in STD_HEADERS))
    print()
    for key, target in TARGETS.items():
        if key not in rows:
            continue
        reference = "readme_std" if key == "readme" else "std_headers"
        ratio = t[key] / t[reference]
        name = "README example" if key == "readme" else "<mp/mp.hpp>"
        print(f"- {name}, header-only: {ratio:.1f}x (target <= {target:g}x: {'met' if ratio <= target else 'not met'})")

    if args.keep:
        print(f"\n(files kept in {work})", file=sys.stderr)
    else:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
