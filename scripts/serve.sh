#!/usr/bin/env bash
# Usage: serve a checkpoint on this GPU node with FastDeploy: environment checks, then `ernie-ops serve`.
#
#   scripts/serve.sh [ernie-ops serve options]      (every argument goes to `ernie-ops serve`)
#   scripts/serve.sh --help                         this text; `ernie-ops serve --help` lists the options
#   VENV=/opt/ernie/.venv scripts/serve.sh ...
#
# Checks first: nvidia-smi (FastDeploy runs on NVIDIA GPUs only), $VENV/bin/ernie-ops, `ernie-ops doctor`.
# Environment: VENV (default .venv). Exit status is ernie-ops serve's: 0 ok, 1 failed, 2 usage or
# environment error, 130 interrupted (Ctrl-C stops the server and its workers).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
if [ "$#" -eq 0 ]; then usage >&2; exit 2; fi
if [ "$1" = "-h" ] || [ "$1" = "--help" ]; then usage; exit 0; fi
if ! command -v nvidia-smi > /dev/null; then
    echo "error: nvidia-smi not found: FastDeploy needs an NVIDIA GPU node (SM80/86/89/90)" >&2
    echo "  hint: on a CPU machine use the embedded backend through ernie-ops serve directly" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/ernie-ops" ]; then
    echo "error: $VENV/bin/ernie-ops not found" >&2
    echo "  hint: scripts/setup_gpu.sh installs Paddle + FastDeploy + ernie-ops (or set VENV)" >&2
    exit 2
fi
# the node must have what serving needs (Paddle GPU build, FastDeploy); doctor says what to do otherwise
"$VENV/bin/ernie-ops" -q doctor > /dev/null || { "$VENV/bin/ernie-ops" doctor; exit 1; }
exec "$VENV/bin/ernie-ops" serve "$@"
