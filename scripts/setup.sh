#!/usr/bin/env bash
# Create .venv and install emseg with everything its tests need. Safe to rerun (fast when done).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.emseg-setup
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
  exit 0
fi
pip install -q --upgrade pip setuptools wheel
# torch first and pinned: this wheel is the CPU build; an unpinned torch (or a package that asks for
# a newer one) would pull several GB of CUDA packages.
pip install -q torch==2.13.0
# sam2 without its dependencies: its torchvision pin would replace the CPU torch with a CUDA one, and
# the video predictor emseg uses does not need torchvision. Its other needs come with the [ml] extra.
SAM2_BUILD_CUDA=0 pip install -q --no-build-isolation --no-deps sam2==1.1.0
pip install -q -e ".[ml,test]"
touch "$stamp"
