#!/usr/bin/env bash
# ddjax on one machine with several GPUs.
#   bash launch/gpu_node.sh --config=configs/frepo_isa.py:paper --workdir=runs/x
# runs one process whose mesh spans every GPU (the real batch is split over them; nothing
# distributed is needed). With DDJAX_PROCESSES=N it runs N processes instead, each owning
# GPUs/N GPUs, joined by jax.distributed on localhost (launch/multiprocess.py --platform=gpu):
#   DDJAX_PROCESSES=8 bash launch/gpu_node.sh --config=...
#   bash launch/gpu_node.sh --dry-run --config=...        # print the command lines, run nothing
# DDJAX_GPUS overrides the GPU count (default: nvidia-smi's).
set -euo pipefail
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
source "$(dirname "${BASH_SOURCE[0]}")/show.sh"
procs=${DDJAX_PROCESSES:-1}
if [ "$procs" -le 1 ]; then
  cmd=(python -m ddjax.main "$@")
  if [ "$dry" = 1 ]; then show "${cmd[@]}"; else exec "${cmd[@]}"; fi
  exit 0
fi
gpus=${DDJAX_GPUS:-$(nvidia-smi -L | wc -l)}
if [ $((gpus % procs)) -ne 0 ]; then
  echo "DDJAX_PROCESSES=$procs does not divide the $gpus GPUs" >&2
  exit 2
fi
launcher=(python "$(dirname "$0")/multiprocess.py" --num_processes="$procs"
          --devices_per_process=$((gpus / procs)) --platform=gpu)
if [ "$dry" = 1 ]; then launcher+=(--dry_run); fi
exec "${launcher[@]}" -- "$@"
