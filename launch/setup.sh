#!/usr/bin/env bash
# Set up a fresh machine for ddjax: Python dependencies (CPU JAX by default) and the default dataset.
#   DDJAX_JAX_EXTRA=cuda12 bash launch/setup.sh     # NVIDIA GPU
#   DDJAX_JAX_EXTRA=tpu    bash launch/setup.sh     # TPU VM
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${DDJAX_JAX_EXTRA:-cpu}"
python -m pip install --quiet --disable-pip-version-check -e ".[${extra},test]"

fmnist=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$fmnist" ] && [ -z "${DDJAX_DATA:-}" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."
    $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "Fashion-MNIST not found: put its four IDX files in a directory and set DDJAX_DATA to it." >&2
  fi
fi
