#!/usr/bin/env bash
# Run the whole test suite while every core is kept busy by other processes, several times and at
# several Trio scheduling seeds. A test that fails only here waits for time instead of an event.
#
#   scripts/stress_suite.sh              # 3 runs, seeds 0 1 2, one busy loop per core
#   RUNS=5 SEEDS="3 4" scripts/stress_suite.sh -k process   # extra arguments go to pytest
#
# Prints one line per run (and the failed tests of a failed run); exits nonzero if any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-3}
seeds=(${SEEDS:-0 1 2})
hogs=${HOGS:-$(nproc)}

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
for _ in $(seq "$hogs"); do
    python -c "while True: pass" &
    pids+=($!)
done
failed=0
echo "stress: $hogs busy loops on $(nproc) cores, $runs runs, seeds ${seeds[*]}"

for run in $(seq "$runs"); do
    seed=${seeds[$(((run - 1) % ${#seeds[@]}))]}
    start=$SECONDS
    log=$(mktemp)
    if TRIO_SCHEDULING_SEED=$seed python -m pytest -q -p no:cacheprovider "$@" >"$log" 2>&1; then
        echo "run $run (seed $seed): $(tail -n 1 "$log") [$((SECONDS - start)) s wall]"
        rm -f "$log"
    else
        echo "run $run (seed $seed) FAILED [$((SECONDS - start)) s wall]; its log: $log"
        grep -E "^(FAILED|ERROR)" "$log" || tail -n 40 "$log"
        failed=$((failed + 1))
    fi
done
if [ "$failed" != 0 ]; then echo "stress: $failed of $runs runs failed"; exit 1; fi
echo "stress: all $runs runs passed"
