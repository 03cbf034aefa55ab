#!/usr/bin/env bash
# CPU / development install, from nothing: a virtualenv with PaddlePaddle (CPU build), ERNIEKit,
# PaddleFormers and ernie-ops (editable, with the serve and dev extras), pinned by constraints.txt.
#
#   scripts/setup.sh                   # creates ./.venv
#   VENV=~/venvs/eo scripts/setup.sh   # elsewhere
#   PYTHON=python3.11 scripts/setup.sh # with a given interpreter (3.10+)
#
# GPU nodes use scripts/setup_gpu.sh instead (paddlepaddle-gpu, ERNIEKit from source, FastDeploy).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

if ! command -v "$PYTHON" >/dev/null; then
    echo "error: no Python interpreter '$PYTHON' on PATH" >&2
    echo "  hint: install Python 3.10+ or name one: PYTHON=python3.11 scripts/setup.sh" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "error: ernie-ops needs Python 3.10+, $PYTHON is $("$PYTHON" --version 2>&1)" >&2
    echo "  hint: PYTHON=python3.11 scripts/setup.sh" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
free_mb=$("$PYTHON" -c 'import shutil, sys; print(shutil.disk_usage(sys.argv[1]).free >> 20)' "$VENV")
if [ ! -x "$VENV/bin/ernie-ops" ] && [ "$free_mb" -lt 6000 ]; then  # a first install
    echo "error: ${free_mb} MB free where $VENV is; the install needs about 6000 MB (torch, paddle, ...)" >&2
    echo "  hint: free some disk, or install elsewhere: VENV=/bigdisk/venv scripts/setup.sh" >&2
    exit 2
fi
# --no-cache-dir: the venv is ~4 GB (torch, paddle); a wheel cache beside it doubles the disk it needs
echo "[setup] installing paddlepaddle (CPU), erniekit, paddleformers and ernie-ops into $VENV"
"$VENV/bin/python" -m pip install --progress-bar off --no-cache-dir -q -c constraints.txt -e ".[cpu,serve,dev,torch]"
echo "[setup] done: $("$VENV/bin/ernie-ops" --version); activate with: source $VENV/bin/activate"
