#!/usr/bin/env bash
# Train on this node: environment checks, then `ernie-ops train` (one CPU process or every GPU here).
#
#   scripts/train.sh RECIPE.yaml [key=value ...] [ernie-ops train options]
#   scripts/train.sh recipes/ERNIE-4.5-21B-A3B/sft_lora_8k.yaml train_dataset_path=data/train.jsonl
#   GPUS=0,1,2,3 scripts/train.sh recipes/ERNIE-4.5-300B-A47B/sft_wint4_lora_8k.yaml
#   scripts/train.sh --resume runs/sft_lora_8k-20261123-101500
#
# Environment: GPUS (default: every visible GPU, or the CPU), VENV (default .venv).
# Exit status is ernie-ops train's: 0 succeeded, 1 failed / stopped / refused, 2 usage, 130 interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
if [ "$#" -eq 0 ]; then usage >&2; exit 2; fi
if [ "$1" = "-h" ] || [ "$1" = "--help" ]; then usage; exit 0; fi
if [ ! -x "$VENV/bin/ernie-ops" ]; then
    echo "error: $VENV/bin/ernie-ops not found" >&2
    echo "  hint: scripts/setup_gpu.sh on GPU nodes, scripts/setup.sh on CPU machines (or set VENV)" >&2
    exit 2
fi
# the node must have what training needs; doctor says what to do otherwise
"$VENV/bin/ernie-ops" -q doctor > /dev/null || { "$VENV/bin/ernie-ops" doctor; exit 1; }

args=("$@")
if [ -n "${GPUS:-}" ]; then args+=(--gpus "$GPUS"); fi
exec "$VENV/bin/ernie-ops" train "${args[@]}"
