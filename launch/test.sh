#!/usr/bin/env bash
# Set up (as launch/setup.sh) and run the whole test suite on CPU.
# The tests run in DDJAX_TEST_WORKERS pytest-xdist processes (default: the number of cores, at
# most 4; the suite is mostly single-threaded XLA compilation, and each worker can hold a few GB).
# DDJAX_TEST_WORKERS=0 runs them in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
cores="$(python -c 'import os; print(len(os.sched_getaffinity(0)))')"
workers="${DDJAX_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}"
parallel=()
if [ "$workers" -gt 1 ]; then parallel=(-n "$workers" --dist worksteal); fi
JAX_PLATFORMS=cpu python -m pytest -q "${parallel[@]}" "$@"
