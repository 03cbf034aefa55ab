#!/usr/bin/env bash
# The main job on a fresh CPU machine, no GPU and no model hub: install, check the node, then
# `ernie-ops demo`: a tiny random ERNIE 4.5 model learns a task with LoRA through the real ERNIEKit,
# is exported, verified, served on the embedded CPU backend, smoke-tested, load-tested and evaluated
# against its base; report and verdict in runs/demo-<time>/report.html.
#
#   scripts/quickstart.sh            # exit 0 when the verdict is SHIP
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
export VENV

scripts/setup.sh
"$VENV/bin/ernie-ops" doctor
"$VENV/bin/ernie-ops" demo
