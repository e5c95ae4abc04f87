#!/usr/bin/env bash
# Set up everything and run the whole test suite (the README's test command; .ci/run calls it).
#   bash tools/run-tests.sh [extra pytest args]
# Creates .venv (CPU torch 2.13.0 pinned for this machine kind), installs the package with
# its napari and testing extras, installs Xvfb for the GUI tests when run as root, then runs
# the import-linter contract, ruff and pytest (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pin the CPU wheel here: an unpinned torch pulls a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0" -e ".[all,testing,bench]"
if ! command -v Xvfb >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 \
    libxcb-xkb1 libxkbcommon-x11-0 libxcb-cursor0 libegl1 libgl1 libfontconfig1 libdbus-1-3 >/dev/null
fi
lint-imports
ruff check src tests benchmarks tools
set +e
python -m pytest -ra "$@"
rc=$?
set -e
# pytest exits 5 when no test ran: that is a failure here.
[ "$rc" = 5 ] && echo "no tests ran" >&2
exit "$rc"
