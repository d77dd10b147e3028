#!/usr/bin/env bash
# ddjax on a Cloud TPU VM slice: every worker (host) runs the same command, joined by
# jax.distributed (JAX detects the TPU workers). Run from the repository root on your machine:
#   bash launch/tpu_vm.sh NAME ZONE setup          # copy this checkout to every worker, install
#   bash launch/tpu_vm.sh NAME ZONE run --config=configs/frepo_isa.py:paper --workdir=/mnt/runs/x
#   bash launch/tpu_vm.sh --dry-run NAME ZONE run ...   # print the commands, run nothing
# The --workdir must be a directory every worker sees (e.g. a bucket mounted with gcsfuse at the
# same path on each worker): Orbax writes the replicated state once and every worker restores it.
set -euo pipefail
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
source "$(dirname "${BASH_SOURCE[0]}")/show.sh"
if [ $# -lt 3 ]; then
  echo "usage: bash launch/tpu_vm.sh [--dry-run] NAME ZONE setup|run [ddjax.main flags]" >&2
  exit 2
fi
name=$1 zone=$2 what=$3
shift 3
cd "$(dirname "$0")/.."
step() {   # print or run one command
  if [ "$dry" = 1 ]; then show "$@"; else "$@"; fi
}
ssh_all() {
  step gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$1"
}
case "$what" in
  setup)
    step git archive --format=tar.gz -o /tmp/ddjax.tar.gz HEAD
    step gcloud compute tpus tpu-vm scp /tmp/ddjax.tar.gz "$name":ddjax.tar.gz --zone="$zone" \
      --worker=all
    ssh_all 'mkdir -p ~/ddjax && tar -xzf ~/ddjax.tar.gz -C ~/ddjax && cd ~/ddjax &&'\
' DDJAX_JAX_EXTRA=tpu bash launch/setup.sh'
    ;;
  run)
    flags=$(printf ' %q' "$@")
    ssh_all "cd ~/ddjax && python -m ddjax.main${flags} --config.distributed.initialize=on"
    ;;
  *)
    echo "unknown step '$what': setup or run" >&2
    exit 2
    ;;
esac
