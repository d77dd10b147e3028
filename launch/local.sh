#!/usr/bin/env bash
# Local launcher: set up, then run one ddjax job with the given flags, e.g.
#   bash launch/local.sh --config=configs/frepo_isa.py --config.distill.ipc=10 --workdir=runs/ipc10
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec python -m ddjax.main "$@"
