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
# emseg with its extras: sam2's other needs (hydra-core, iopath, pillow) come with [ml].
echo "setup: sam2 is installed without torchvision on purpose (its torchvision pin would replace the CPU" \
     "torch with a CUDA one, and emseg's SAM2 backend does not use torchvision); pip's report that" \
     "'sam2 requires torchvision' is that choice, not a failed install, and is left out below."
pip_quiet() {
  # pip, with its dependency-resolver report left out when the only conflict it names is sam2's
  # torchvision; any other conflict (or error) is printed as pip wrote it.
  local log rc=0
  log=$(mktemp)
  pip "$@" 2>"$log" || rc=$?
  python - "$log" <<'PY'
import re, sys
lines = open(sys.argv[1]).read().splitlines()
known = re.compile(r"^sam2 \S+ requires torchvision")
conflict = re.compile(r"^\S+ \S+ (requires|has requirement) ")
rest = [line for line in lines if not known.match(line)]
if not any(conflict.match(line) for line in rest):
    rest = [line for line in rest if not line.startswith("ERROR: pip's dependency resolver")]
if rest:
    print("\n".join(rest), file=sys.stderr)
PY
  rm -f "$log"
  return $rc
}
pip_quiet install -q -e ".[ml,test]"
# sam2 last and without its dependencies (see above); with --no-deps pip checks no conflicts here.
SAM2_BUILD_CUDA=0 pip_quiet install -q --no-build-isolation --no-deps sam2==1.1.0
# ome-zarr (tests read emseg's OME-Zarr output with it, as napari's plugin does): ome-zarr-models
# pins pydantic<2.13, which emseg's newer pydantic satisfies in practice, so those two go in without
# their dependencies; the rest of what they need is installed normally first.
pip_quiet install -q "Deprecated>=1.2" "rangehttpserver>=1.2" "pydantic-zarr>=0.8.2" "aiohttp>=3.8"
pip_quiet install -q --no-deps ome-zarr==0.18.0 ome-zarr-models==1.7
touch "$stamp"
