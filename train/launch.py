"""The command that runs ERNIEKit: one CPU process, or paddle.distributed.launch on GPUs and nodes.

On GPUs this is what `erniekit train` itself builds (erniekit/cli.py): the launcher module under
`python -m paddle.distributed.launch` with `--gpus`, `--log_dir` and, across nodes, `--master` and
`--nnodes`, in an environment cleaned of stale PADDLE_* variables. On a CPU `erniekit train` does not
work (it assumes a GPU); `python -m erniekit.launcher train` runs the same workflow in one process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

from ernie_ops.errors import UserError

log = logging.getLogger(__name__)

# Left over from an outer launch, these make paddle.distributed.launch join the wrong job.
STALE_PADDLE_ENV = (
    "PADDLE_TRAINERS_NUM",
    "PADDLE_TRAINER_ID",
    "PADDLE_WORKERS_IP_PORT_LIST",
    "PADDLE_TRAINERS",
    "PADDLE_NUM_GRADIENT_SERVERS",
    "PADDLE_ELASTIC_JOB_ID",
    "PADDLE_TRAINER_ENDPOINTS",
    "DISTRIBUTED_TRAINER_ENDPOINTS",
    "FLAGS_START_PORT",
    "PADDLE_ELASTIC_TIMEOUT",
)
# Set by `erniekit train` for every launch (erniekit/cli.py).
ERNIEKIT_ENV = {
    "FLAGS_set_to_1d": "False",
    "NVIDIA_TF32_OVERRIDE": "0",
    "FLAGS_dataloader_use_file_descriptor": "False",
}


def detect_gpus() -> list[int]:
    """The GPUs this process may use, by the machine's index (as nvidia-smi numbers them), from
    `ernie_ops.devices` (NVML + CUDA_VISIBLE_DEVICES, no Paddle import); [] without a GPU.

    paddle.distributed.launch names GPUs by the CUDA_VISIBLE_DEVICES entries, so these indices are
    its `--gpus` as long as the variable lists indices; `launch_env` rewrites one that names GPUs by
    UUID into their indices. MIG devices have no index and are left out (with a warning)."""
    from ernie_ops.devices import gpus

    found = gpus()
    if found.reason and found.ignored:
        log.warning("%s", found.reason)
    migs = [g.uuid for g in found.gpus if g.is_mig]
    if migs:
        log.warning(
            "CUDA_VISIBLE_DEVICES names MIG devices (%s): paddle.distributed.launch takes whole GPUs by "
            "index, so they are not used; set CUDA_VISIBLE_DEVICES to GPU indices (nvidia-smi -L lists them)",
            ", ".join(migs),
        )
    return [g.nvml_index for g in found.gpus if not g.is_mig]


def parse_gpus(text: str) -> list[int]:
    try:
        gpus = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--gpus {text!r}: expected GPU indices like 0,1,2,3") from None
    if not gpus or len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise UserError(f"--gpus {text!r}: expected distinct GPU indices like 0,1,2,3")
    return gpus


def erniekit_launcher_path() -> str:
    spec = importlib.util.find_spec("erniekit")
    if spec is None or spec.origin is None:
        raise UserError("ERNIEKit is not installed", hint="run `ernie-ops doctor` for the install command")
    return str(Path(spec.origin).parent / "launcher.py")


def build_command(
    recipe: Path,
    gpus: list[int],
    log_dir: Path,
    nnodes: int = 1,
    master: str | None = None,
    action: str = "train",
) -> list[str]:
    """The argument list that runs `action` (train / export) on `recipe`."""
    if not gpus:
        if nnodes > 1:
            raise UserError("--nnodes needs GPUs", hint="pass --gpus 0,1,... on every node")
        return [sys.executable, "-m", "erniekit.launcher", action, str(recipe)]
    command = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--log_dir",
        str(log_dir),
        "--gpus",
        ",".join(map(str, gpus)),
    ]
    if nnodes > 1:
        if not master or ":" not in master:
            raise UserError(
                "--nnodes > 1 needs --master IP:PORT (the first node's address, the same on every node)"
            )
        command += ["--master", master, "--nnodes", str(nnodes)]
    return [*command, erniekit_launcher_path(), action, str(recipe)]


def launch_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in (base if base is not None else os.environ).items() if k not in STALE_PADDLE_ENV}
    env.update(ERNIEKIT_ENV)
    env.update(_visible_as_indices(env))
    env["PYTHONUNBUFFERED"] = "1"  # log lines as they happen: the progress bar and watchdog read them
    return env


def _visible_as_indices(env: dict[str, str]) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES by index when it names whole GPUs by UUID (or not as plain numbers):
    paddle.distributed.launch matches `--gpus` against its entries, and `detect_gpus` gives indices.
    PCI_BUS_ID makes CUDA number the GPUs as NVML does, so the same GPUs stay visible in the same
    order."""
    from ernie_ops.devices import VISIBLE, gpus

    visible = env.get(VISIBLE)
    if visible is None or all(e.strip().isdigit() for e in visible.split(",")):
        return {}
    found = gpus(env)
    if not found or any(g.is_mig for g in found.gpus):
        return {}
    indices = ",".join(str(g.nvml_index) for g in found.gpus)
    log.info("%s=%s is %s by index (what paddle.distributed.launch expects)", VISIBLE, visible, indices)
    return {VISIBLE: indices, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
