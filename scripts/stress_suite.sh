#!/usr/bin/env bash
# Run the whole test suite while every core is kept busy by other processes, several times, each in
# a fresh Trio scheduling order. A test that fails only here waits for time instead of an event, or
# leans on an order of tasks.
#
#   scripts/stress_suite.sh              # 3 runs, one busy loop per core
#   RUNS=5 HOGS=4 scripts/stress_suite.sh -k process   # extra arguments go to pytest
#
# Prints one line per run (and the failed tests of a failed run); exits nonzero if any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-3}
hogs=${HOGS:-$(nproc)}

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
for _ in $(seq "$hogs"); do
    python -c "while True: pass" &
    pids+=($!)
done
failed=0
echo "stress: $hogs busy loops on $(nproc) cores, $runs runs"

for run in $(seq "$runs"); do
    start=$SECONDS
    log=$(mktemp)
    if python -m pytest -q -p no:cacheprovider "$@" >"$log" 2>&1; then
        echo "run $run: $(tail -n 1 "$log") [$((SECONDS - start)) s wall]"
        rm -f "$log"
    else
        echo "run $run FAILED [$((SECONDS - start)) s wall]; its log: $log"
        grep -E "^(FAILED|ERROR)" "$log" || tail -n 40 "$log"
        failed=$((failed + 1))
    fi
done
if [ "$failed" != 0 ]; then echo "stress: $failed of $runs runs failed"; exit 1; fi
echo "stress: all $runs runs passed"
