#!/usr/bin/env bash
# The main job on a fresh CPU machine, no GPU and no model hub: install, check the node, build a
# tiny random ERNIE 4.5 model, fine-tune it with LoRA through the real ERNIEKit (run record, metrics,
# loss curve), merge the adapter with ERNIEKit's export and verify the servable checkpoint.
#
#   scripts/quickstart.sh            # writes runs/tiny-dense and runs/quickstart-<timestamp>/
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
export VENV

scripts/setup.sh
"$VENV/bin/ernie-ops" doctor
"$VENV/bin/ernie-ops" tiny-model runs/tiny-dense --force
"$VENV/bin/ernie-ops" train recipes/tiny/sft_lora_cpu.yaml --run-name quickstart
run="$(ls -td runs/quickstart-* | head -n 1)"
"$VENV/bin/ernie-ops" export "$run"
echo "[quickstart] run record: $run/run.json; loss curve: $run/loss.png; servable checkpoint: $run/export"
