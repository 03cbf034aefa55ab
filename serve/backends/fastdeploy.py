"""FastDeploy (GPU): the production server. Its command comes from `serve/fastdeploy.py` (the flag
table of each release and the versioned builder); pre-flight adds the GPU inventory and the memory
planner, and the side-port collision check FastDeploy's IPC keys need."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ernie_ops.serve.backends.base import Backend, Command

if TYPE_CHECKING:
    from ernie_ops.serve.preflight import Target
    from ernie_ops.serve.profile import ServeProfile


class FastDeploy(Backend):
    name = "fastdeploy"
    title = "FastDeploy"
    described = "FastDeploy"
    serves = "ERNIE 4.5 Paddle checkpoints (text and VL) on GPUs, quantized wint8 / wint4"
    priority = 10
    default_host = "0.0.0.0"  # FastDeploy's own default: a GPU node serves other machines
    api_key_env = "FD_API_KEY"
    port_block = 4  # --port, then --metrics-port, --engine-worker-queue-port, --cache-queue-port

    def unavailable(self) -> str | None:
        import importlib.util

        from ernie_ops.train.launch import detect_gpus

        has_fastdeploy = importlib.util.find_spec("fastdeploy") is not None
        if not detect_gpus():
            return "no GPU"
        return None if has_fastdeploy else "no FastDeploy"

    def ports(self, profile: ServeProfile) -> dict[str, int]:
        from ernie_ops.serve.preflight import server_ports

        return server_ports(profile, self.name)

    def preflight(self, profile: ServeProfile, target: Target) -> list[str]:
        from ernie_ops.serve.preflight import check_checkpoint, check_gpus, check_ports

        check_checkpoint(target)
        check_ports(profile)
        plan = check_gpus(profile, target)
        return [plan] if plan else []

    def command(
        self, profile: ServeProfile, target: Target | None = None, python: str | None = None
    ) -> Command:
        from ernie_ops.serve.fastdeploy import build_launch

        if target is None:
            model_dir = Path(profile.model).expanduser()
            try:
                resolved = self.resolve(profile)
                model_dir, is_vl = resolved.model_dir, resolved.is_vl
            except Exception:  # showing the command needs no local model: show it as given
                is_vl = "-VL-" in profile.model
        else:
            model_dir, is_vl = target.model_dir, target.is_vl
        launch = build_launch(profile, model_dir, is_vl, python=python or "python")
        return Command(launch.argv, launch.env)


BACKEND = FastDeploy()
