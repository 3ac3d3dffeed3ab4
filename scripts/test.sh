#!/usr/bin/env bash
# Set up, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The browser test (tests/test_viewer.py) drives Debian's Chromium through its WebDriver; install both
# when they are missing and apt-get is there (CI runs this as root on a clean Debian machine).
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver; } \
    || echo "test.sh: could not install chromium; the browser test will be skipped" >&2
fi
. .venv/bin/activate
exec python -m pytest -q "$@"
