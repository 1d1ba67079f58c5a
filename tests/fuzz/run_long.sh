#!/bin/sh
# Long libFuzzer runs of every fuzz target (the ctest smoke runs last seconds): each target runs MINUTES minutes
# (default 10) with inputs up to 1 MiB, niced, from a copy of its committed corpus, and a table gives per target the
# executions, the coverage (cov: edges, ft: features), the corpus size, the peak RSS and the crashes found.
#
#   cmake --preset clang && cmake --build --preset clang      # builds the fuzz targets (clang only)
#   tests/fuzz/run_long.sh [MINUTES] [BUILD_DIR]              # BUILD_DIR defaults to build/clang
#
# Environment: TARGETS (default: all six), JOBS (targets run at once, default 1), WORK (default: a fresh directory
# under /tmp, kept: logs, the grown corpora and any crash inputs), MERGE=1 to merge the inputs that add coverage
# into tests/fuzz/corpus/<target> afterwards (check their sizes before committing them), LEN_CONTROL (libFuzzer's
# -len_control, default 100: the length limit grows slowly from the corpus's longest input, so a 10-minute run
# stays far below 1 MiB, e.g. 12 KB for user_types; 0 mutates up to -max_len from the start, fewer execs/s).
set -eu

minutes=${1:-10}
build=${2:-build/clang}
source_dir=$(cd "$(dirname "$0")" && pwd)
targets=${TARGETS:-"deserialize connection manager user_types manager_client manager_session"}
jobs=${JOBS:-1}
work=${WORK:-$(mktemp -d /tmp/mp-fuzz-long-XXXXXX)}
seconds=$(awk "BEGIN { printf \"%d\", $minutes * 60 }")

run_one() {
  t=$1
  binary=$build/tests/fuzz/fuzz_$t
  if [ ! -x "$binary" ]; then
    echo "$t: $binary not built" >"$work/$t.log"
    return 0
  fi
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  # The user-types target also bounds every single allocation: finding 1 of issue 19 was a 4.2 GB reservation.
  extra=""
  [ "$t" = user_types ] && extra="-malloc_limit_mb=512"
  nice -n 19 "$binary" -max_total_time="$seconds" -max_len=1048576 -len_control="${LEN_CONTROL:-100}" -timeout=30 \
    -rss_limit_mb=2048 $extra -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" \
    "$work/$t/corpus" "$source_dir/corpus/$t" \
    >"$work/$t.log" 2>&1 || true
}

running=0
for t in $targets; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait
    running=0
  fi
done
wait

printf '%-16s %7s %12s %9s %8s %8s %7s %8s %9s %7s\n' \
  target minutes execs execs/s cov ft corpus len_lim peak_rss crashes
for t in $targets; do
  log=$work/$t.log
  [ -f "$log" ] || continue
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  # The last status line: "#N <event> cov: C ft: F corp: K/S ..."
  status=$(grep -E '^#[0-9]+' "$log" | grep ' cov: ' | tail -1)
  cov=$(echo "$status" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
  ft=$(echo "$status" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
  corp=$(echo "$status" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
  lim=$(echo "$status" | sed -n 's/.* lim: \([0-9]*\).*/\1/p')  # the input length libFuzzer had reached
  crashes=$(find "$work/$t/artifacts" -type f 2>/dev/null | wc -l)
  rate=$(awk "BEGIN { if (${execs:-0} > 0) printf \"%d\", ${execs:-0} / $seconds; else print 0 }")
  printf '%-16s %7s %12s %9s %8s %8s %7s %8s %7sMB %7s\n' "$t" "$minutes" "${execs:-?}" "$rate" "${cov:-?}" "${ft:-?}" \
    "${corp:-?}" "${lim:-?}" "${rss:-?}" "$crashes"
  if [ "${MERGE:-0}" = 1 ] && [ -x "$build/tests/fuzz/fuzz_$t" ]; then
    "$build/tests/fuzz/fuzz_$t" -merge=1 -max_len=4096 "$source_dir/corpus/$t" "$work/$t/corpus" >/dev/null 2>&1 || true
  fi
done
echo "logs, grown corpora and crash inputs: $work"
