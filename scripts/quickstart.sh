#!/usr/bin/env bash
# The main job on a fresh CPU machine, no GPU and no model hub: install, check the node, build a
# tiny random ERNIE 4.5 model and fine-tune it with the real ERNIEKit for a few steps.
#
#   scripts/quickstart.sh            # writes runs/tiny-dense and runs/tiny-sft
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
export VENV

scripts/setup.sh
"$VENV/bin/ernie-ops" doctor
"$VENV/bin/ernie-ops" tiny-model runs/tiny-dense --force
# `erniekit train` assumes a GPU; the launcher module is ERNIEKit's single-process (CPU) path.
"$VENV/bin/python" -m erniekit.launcher train recipes/tiny/sft_cpu.yaml
echo "[quickstart] fine-tuned checkpoint: runs/tiny-sft"
