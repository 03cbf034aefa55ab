#!/usr/bin/env bash
# The test command: installs everything from nothing (scripts/setup.sh), lints, then runs pytest.
#
#   scripts/test.sh                          # everything, as CI runs it
#   scripts/test.sh -m "not slow"            # pytest arguments pass through
#   scripts/test.sh tests/test_catalog.py -k kv
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
export VENV

scripts/setup.sh
echo "[test] ruff check + format"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "[test] mypy"
"$VENV/bin/mypy"
echo "[test] doctor"
"$VENV/bin/ernie-ops" doctor
echo "[test] pytest"
"$VENV/bin/python" -m pytest "$@"
