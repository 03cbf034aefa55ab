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
USAGE_LINES=10
# shellcheck source=scripts/lib/node.sh
source "$(dirname "$0")/lib/node.sh"

handle_help "$@"
need_gpu "FastDeploy needs an NVIDIA GPU node (SM80/86/89/90)"
need_ernie_ops
exec "$VENV/bin/ernie-ops" serve "$@"
