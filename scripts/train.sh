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
USAGE_LINES=10
# shellcheck source=scripts/lib/node.sh
source "$(dirname "$0")/lib/node.sh"

handle_help "$@"
need_ernie_ops

args=("$@")
if [ -n "${GPUS:-}" ]; then args+=(--gpus "$GPUS"); fi
exec "$VENV/bin/ernie-ops" train "${args[@]}"
