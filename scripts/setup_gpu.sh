#!/usr/bin/env bash
# GPU node install (Linux, NVIDIA, CUDA 12.x): paddlepaddle-gpu 3.x and fastdeploy-gpu from
# Paddle's own package indexes (PyPI's paddlepaddle-gpu stops at 2.6 and PyPI's "fastdeploy" is
# an unrelated project), ERNIEKit from a source checkout (its 1.1+ wheels lack the `ernie`
# package), then ernie-ops. The Paddle/FastDeploy pair must match (ernie-ops doctor checks it):
#   FastDeploy 2.0->Paddle 3.1.0, 2.1->3.1.1, 2.2->3.2.0, 2.3->3.2.1, 2.4->3.3.0, 2.5->3.3.1
#
# Required: the two index URLs for your CUDA version, from the PaddlePaddle and FastDeploy
# install pages (added as an extra index, so your default index still serves the rest):
#   PADDLE_INDEX=<paddlepaddle-gpu index> FASTDEPLOY_INDEX=<fastdeploy-gpu index> scripts/setup_gpu.sh
# Optional:
#   PADDLE_VERSION=3.3.1 FASTDEPLOY_VERSION=2.5.*   the pair to install (defaults shown)
#   ERNIE_SRC=path/to/ERNIE   an existing ERNIEKit checkout (default: clone into ./third_party/ERNIE)
#   ERNIE_REF=<tag|commit>    what to check out when cloning (default: the default branch)
#   SKIP_FASTDEPLOY=1         training-only nodes
#   VENV=.venv PYTHON=python3
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
PADDLE_VERSION="${PADDLE_VERSION:-3.3.1}"
FASTDEPLOY_VERSION="${FASTDEPLOY_VERSION:-2.5.*}"
ERNIE_SRC="${ERNIE_SRC:-third_party/ERNIE}"

missing=()
[ -n "${PADDLE_INDEX:-}" ] || missing+=(PADDLE_INDEX)
[ -n "${SKIP_FASTDEPLOY:-}" ] || [ -n "${FASTDEPLOY_INDEX:-}" ] || missing+=(FASTDEPLOY_INDEX)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "error: set ${missing[*]} to Paddle's package index for your CUDA version" >&2
    echo "  hint: the PaddlePaddle (paddlepaddle-gpu) and FastDeploy (fastdeploy-gpu) install pages" >&2
    echo "        give the index URL per CUDA version; SKIP_FASTDEPLOY=1 for training-only nodes" >&2
    exit 2
fi
if ! command -v nvidia-smi >/dev/null; then
    echo "warning: nvidia-smi not found; this script is for GPU nodes (CPU: scripts/setup.sh)" >&2
fi

# The pins of constraints.txt minus the CPU-only ones (Paddle and ERNIEKit come from elsewhere here).
gpu_constraints="$(mktemp)"
trap 'rm -f "$gpu_constraints"' EXIT
grep -vE '^(paddlepaddle|erniekit)==' constraints.txt > "$gpu_constraints"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --progress-bar off)

echo "[setup-gpu] paddlepaddle-gpu==$PADDLE_VERSION"
"${pip[@]}" "paddlepaddle-gpu==$PADDLE_VERSION" --extra-index-url "$PADDLE_INDEX"

echo "[setup-gpu] ERNIEKit from source ($ERNIE_SRC)"
if [ ! -d "$ERNIE_SRC" ]; then
    git clone https://github.com/PaddlePaddle/ERNIE "$ERNIE_SRC"
    [ -z "${ERNIE_REF:-}" ] || git -C "$ERNIE_SRC" checkout "$ERNIE_REF"
fi
"${pip[@]}" -c "$gpu_constraints" -e "$ERNIE_SRC"

if [ -z "${SKIP_FASTDEPLOY:-}" ]; then
    echo "[setup-gpu] fastdeploy-gpu==$FASTDEPLOY_VERSION"
    "${pip[@]}" "fastdeploy-gpu==$FASTDEPLOY_VERSION" --extra-index-url "$FASTDEPLOY_INDEX"
fi

echo "[setup-gpu] ernie-ops"
"${pip[@]}" -c "$gpu_constraints" -e ".[serve,dev]"
"$VENV/bin/ernie-ops" doctor
