#!/usr/bin/env bash
# Set up a fresh machine: Fashion-MNIST (Debian package), PyTorch, then this package with its dev and ray extras.
# Installs into the active Python (a virtual environment, conda, pyenv...). A system Python that refuses
# pip installs (PEP 668: Debian 12, Ubuntu 23.04+) gets a .venv/ here instead; scripts/python runs
# whichever was used. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_install() { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "$@"; }

FASHION_DIR=/usr/share/datasets/fashion-mnist
if [ ! -e "$FASHION_DIR/train-images-idx3-ubyte.gz" ] && [ ! -e "$FASHION_DIR/train-images-idx3-ubyte" ]; then
  apt_install dataset-fashion-mnist
fi

if [ -z "${PYTHON:-}" ] && [ ! -x .venv/bin/python ]; then
  externally_managed=$(python3 -c 'import sys, sysconfig, pathlib
print(int(sys.prefix == sys.base_prefix
          and pathlib.Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").exists()))')
  if [ "$externally_managed" = 1 ]; then
    echo "setup: $(command -v python3) is managed by the system (PEP 668); installing into .venv/ instead"
    # Debian ships venv's pip bootstrap separately, in python3-venv.
    python3 -m venv .venv 2>/dev/null || { rm -rf .venv && apt_install python3-venv && python3 -m venv .venv; }
  fi
fi
PY=scripts/python

# Keep an existing torch (e.g. a CUDA build on a GPU machine); otherwise take 2.13.0 first, so that
# resolving the project's torch range installs nothing more.
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[dev,ray]"
