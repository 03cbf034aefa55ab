# Shared by the GPU-node entry points (train.sh, train_multinode.sh, serve.sh); sourced, not run.
# Each script keeps its usage text in its header comment (lines 2 .. USAGE_LINES).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

usage() { sed -n "2,${USAGE_LINES}p" "$0" | sed 's/^# \{0,1\}//'; }

# no arguments: usage on stderr, exit 2; --help: usage, exit 0
handle_help() {
    if [ "$#" -eq 0 ]; then usage >&2; exit 2; fi
    if [ "$1" = "-h" ] || [ "$1" = "--help" ]; then usage; exit 0; fi
}

need_gpu() {
    if ! command -v nvidia-smi > /dev/null; then
        echo "error: nvidia-smi not found: $1" >&2
        exit 2
    fi
}

# the venv's ernie-ops exists, and doctor finds everything required (it says what to do otherwise)
need_ernie_ops() {
    if [ ! -x "$VENV/bin/ernie-ops" ]; then
        echo "error: $VENV/bin/ernie-ops not found" >&2
        echo "  hint: scripts/setup_gpu.sh on GPU nodes, scripts/setup.sh on CPU machines (or set VENV)" >&2
        exit 2
    fi
    "$VENV/bin/ernie-ops" -q doctor > /dev/null || { "$VENV/bin/ernie-ops" doctor; exit 1; }
}
