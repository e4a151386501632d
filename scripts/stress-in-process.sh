#!/usr/bin/env bash
# The in-process test suite RUNS times in a row (default 20) under a CPU load of one busy process
# per core (`yes > /dev/null`), to show that no test depends on timing. Prints one line per run and
# the load's own CPU; exits non-zero if any run failed.
# Usage: scripts/stress-in-process.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
bin=$(cargo test --test in_process --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*in_process[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "cannot find the in_process test binary" >&2; exit 1; }
loads=()
for _ in $(seq "$(nproc)"); do
  yes >/dev/null &
  loads+=("$!")
done
trap 'kill "${loads[@]}" 2>/dev/null || true' EXIT
failed=0
for i in $(seq "$runs"); do
  start=$(date +%s.%N)
  if "$bin" >"target/stress-$i.log" 2>&1; then rc=0; else rc=$?; failed=$((failed + 1)); fi
  end=$(date +%s.%N)
  printf 'run %d: exit %d, %.1f s, %s\n' "$i" "$rc" "$(awk "BEGIN { print $end - $start }")" \
    "$(grep -h 'test result' "target/stress-$i.log" | tail -1)"
done
echo "load: $(for p in "${loads[@]}"; do ps -o times= -p "$p" | tr -d ' '; done | paste -sd' ') s of CPU per busy process"
echo "$failed of $runs runs failed (logs in target/stress-N.log)"
[ "$failed" -eq 0 ]
