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
#   PADDLE_VERSION=3.3.1 FASTDEPLOY_VERSION=2.5.*   the pair to install (defaults shown); a pair
#                             outside the table above stops here unless ALLOW_UNDOCUMENTED_PAIR=1
#   ERNIE_SRC=path/to/ERNIE   an existing ERNIEKit checkout (default: clone into ./third_party/ERNIE)
#   ERNIE_REF=<tag|commit>    what to check out when cloning (default: 01d61814c760..., the commit
#                             the newest ERNIEKit schema snapshot of ernie-ops was read from, so
#                             `ernie-ops check` knows exactly the ERNIEKit installed here)
#   SKIP_FASTDEPLOY=1         training-only nodes
#   VENV=.venv PYTHON=python3
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
PADDLE_VERSION="${PADDLE_VERSION:-3.3.1}"
FASTDEPLOY_VERSION="${FASTDEPLOY_VERSION:-2.5.*}"
ERNIE_SRC="${ERNIE_SRC:-third_party/ERNIE}"
ERNIE_REF="${ERNIE_REF:-01d61814c760f95524a7478613b17917377ddf10}"

# FastDeploy release -> the paddlepaddle-gpu it is built against (FastDeploy's install docs;
# the same table as ernie_ops/doctor.py FASTDEPLOY_PADDLE)
documented_paddle() {
    case "$1" in
        2.0*) echo 3.1.0 ;; 2.1*) echo 3.1.1 ;; 2.2*) echo 3.2.0 ;;
        2.3*) echo 3.2.1 ;; 2.4*) echo 3.3.0 ;; 2.5*) echo 3.3.1 ;; *) echo "" ;;
    esac
}

missing=()
[ -n "${PADDLE_INDEX:-}" ] || missing+=(PADDLE_INDEX)
[ -n "${SKIP_FASTDEPLOY:-}" ] || [ -n "${FASTDEPLOY_INDEX:-}" ] || missing+=(FASTDEPLOY_INDEX)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "error: set ${missing[*]} to Paddle's package index for your CUDA version" >&2
    echo "  hint: the PaddlePaddle (paddlepaddle-gpu) and FastDeploy (fastdeploy-gpu) install pages" >&2
    echo "        give the index URL per CUDA version; SKIP_FASTDEPLOY=1 for training-only nodes" >&2
    exit 2
fi
if [ -z "${SKIP_FASTDEPLOY:-}" ] && [ -z "${ALLOW_UNDOCUMENTED_PAIR:-}" ]; then
    wanted="$(documented_paddle "$FASTDEPLOY_VERSION")"
    if [ "$wanted" != "$PADDLE_VERSION" ]; then
        echo "error: fastdeploy-gpu $FASTDEPLOY_VERSION with paddlepaddle-gpu $PADDLE_VERSION is not a pair FastDeploy documents" >&2
        echo "  hint: ${wanted:+fastdeploy-gpu $FASTDEPLOY_VERSION is built for paddlepaddle-gpu $wanted; }documented: 2.0/3.1.0 2.1/3.1.1 2.2/3.2.0 2.3/3.2.1 2.4/3.3.0 2.5/3.3.1 (or ALLOW_UNDOCUMENTED_PAIR=1)" >&2
        exit 2
    fi
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

echo "[setup-gpu] ERNIEKit from source ($ERNIE_SRC at $ERNIE_REF)"
if [ ! -d "$ERNIE_SRC" ]; then
    git clone https://github.com/PaddlePaddle/ERNIE "$ERNIE_SRC"
    git -C "$ERNIE_SRC" checkout --quiet "$ERNIE_REF"
else
    have="$(git -C "$ERNIE_SRC" rev-parse HEAD 2>/dev/null || echo unknown)"
    want="$(git -C "$ERNIE_SRC" rev-parse --verify --quiet "$ERNIE_REF^{commit}" 2>/dev/null || echo "$ERNIE_REF")"
    if [ "$have" != "$want" ]; then
        echo "warning: $ERNIE_SRC is at $have, not $ERNIE_REF; installing it as it is" >&2
        echo "  (git -C $ERNIE_SRC checkout $ERNIE_REF to pin it; ernie-ops check then knows its schema)" >&2
    fi
fi
"${pip[@]}" -c "$gpu_constraints" -e "$ERNIE_SRC"

if [ -z "${SKIP_FASTDEPLOY:-}" ]; then
    echo "[setup-gpu] fastdeploy-gpu==$FASTDEPLOY_VERSION"
    "${pip[@]}" "fastdeploy-gpu==$FASTDEPLOY_VERSION" --extra-index-url "$FASTDEPLOY_INDEX"
fi

echo "[setup-gpu] ernie-ops"
"${pip[@]}" -c "$gpu_constraints" -e ".[serve,dev]"

echo "[setup-gpu] installed:"
"$VENV/bin/python" - "$(git -C "$ERNIE_SRC" rev-parse HEAD 2>/dev/null || echo unknown)" <<'PY'
import importlib.metadata as md
import sys

for name in ("paddlepaddle-gpu", "fastdeploy-gpu", "erniekit", "paddleformers", "ernie-ops"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} (not installed)")
print(f"  ERNIEKit source commit {sys.argv[1]}")
PY
"$VENV/bin/ernie-ops" doctor
