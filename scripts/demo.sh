#!/usr/bin/env bash
# Set up, then run the demo: make a synthetic EM volume, segment it on a local Dask cluster,
# score it against its ground truth and print a Neuroglancer link. Extra arguments go to
# `emseg segment`, e.g. --set blocks.shape=[64,64,64] or --restart.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
exec emseg segment configs/demo.yaml "$@"
