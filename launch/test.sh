#!/usr/bin/env bash
# Set up (as launch/setup.sh) and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
JAX_PLATFORMS=cpu python -m pytest -q "$@"
