#!/usr/bin/env bash
# Train across nodes: run this same command on every node (paddle.distributed.launch joins them).
#
#   NNODES=2 MASTER=10.0.0.1:8080 scripts/train_multinode.sh RECIPE.yaml [key=value ...]
#   NNODES=12 MASTER=10.0.0.1:8080 GPUS=0,1,2,3,4,5,6,7 scripts/train_multinode.sh \
#       recipes/ERNIE-4.5-300B-A47B/sft_8k.yaml train_dataset_path=/shared/data/train.jsonl
#
# Environment: NNODES (required, > 1), MASTER (required: the first node's IP:PORT, the same on every
# node), GPUS (default 0..7), VENV (default .venv). Paths must be the same on every node (shared
# storage). The recipe is checked against NNODES x GPUS before anything starts.
USAGE_LINES=10
# shellcheck source=scripts/lib/node.sh
source "$(dirname "$0")/lib/node.sh"

handle_help "$@"
missing=()
[ -n "${NNODES:-}" ] || missing+=(NNODES)
[ -n "${MASTER:-}" ] || missing+=(MASTER)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "error: set ${missing[*]} (see: scripts/train_multinode.sh --help)" >&2
    exit 2
fi
if ! [[ "$NNODES" =~ ^[0-9]+$ ]] || [ "$NNODES" -lt 2 ]; then
    echo "error: NNODES=$NNODES: give the number of nodes (2 or more); one node: scripts/train.sh" >&2
    exit 2
fi
if ! [[ "$MASTER" =~ ^[^:]+:[0-9]+$ ]]; then
    echo "error: MASTER=$MASTER: expected IP:PORT of the first node, e.g. 10.0.0.1:8080" >&2
    exit 2
fi
need_gpu "multi-node training needs GPU nodes"
need_ernie_ops
exec "$VENV/bin/ernie-ops" train "$@" --gpus "${GPUS:-0,1,2,3,4,5,6,7}" --nnodes "$NNODES" --master "$MASTER"
