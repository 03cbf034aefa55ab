"""Before FastDeploy starts: the model is a verified local checkpoint (a missing path makes
FastDeploy try a hub download; a LoRA adapter cannot be served), the ports are free and do not
collide with another instance, and the GPUs exist with enough memory for the plan."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ernie_ops.catalog import MODELS, ModelSpec
from ernie_ops.errors import UserError

if TYPE_CHECKING:
    from ernie_ops.serve.gpus import GpuSpec

LOG_DIR = Path("runs") / "serve"  # logs of servers not started from a run directory (project-local)
LOOPBACK = "127.0.0.1"


def state_dir() -> Path:
    """Where detached servers are recorded (`<port>.json`) and ports are locked (`<port>.lock`): one
    directory per user, so `serve status` / `stop` find every server from any working directory."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "ernie-ops" / "serve"


def is_loopback(host: str) -> bool:
    """Only this machine can reach a server bound to `host`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or an interface address: reachable from the network


def default_host(backend: str | None) -> str:
    """FastDeploy binds every interface by default (its own default, for GPU nodes serving others);
    the embedded CPU server, which has no TLS, this machine only."""
    return "0.0.0.0" if backend == "fastdeploy" else LOOPBACK


def exposure_warning(host: str, port: int, protected: bool) -> str | None:
    """What to say when a server is reachable from the network without an API key."""
    if protected or is_loopback(host):
        return None
    return (
        f"{host}:{port} is open to the network with no API key: anyone who can reach this machine can use "
        "the model. Set api_key_env (or api_key_file) in the profile, or --host 127.0.0.1"
    )


def port_free(host: str, port: int) -> bool:
    """Whether a server could bind host:port now. Probed as servers bind (uvicorn, FastDeploy):
    with SO_REUSEADDR, so a port whose old connections sit in TIME_WAIT counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError:
            return False
    return True


@dataclass
class Target:
    model_dir: Path
    spec: ModelSpec | None  # the catalog model it is (None: not a public ERNIE 4.5 shape, e.g. tiny)
    is_vl: bool
    is_moe: bool
    run_dir: Path | None = None


def resolve_model(model: str, backend: str = "fastdeploy") -> Target:
    path = Path(model).expanduser()
    run_dir = None
    if (path / "run.json").is_file():
        from ernie_ops.train.record import RunRecord

        record = RunRecord.load(path)
        run_dir = path
        if record.exported:
            path = Path(record.exported)
        elif record.is_lora:
            from ernie_ops.serve.backends import get

            server = get(backend).title
            raise UserError(
                f"{model} is a LoRA run that is not exported yet: {server} serves merged checkpoints only",
                hint=f"merge the adapter into the base model first: ernie-ops export {model}",
            )
        elif record.checkpoint:
            path = Path(record.checkpoint)
        else:
            raise UserError(
                f"{model} has no finished checkpoint (status {record.describe_status()})",
                hint=f"finish it first: ernie-ops train --resume {model}",
            )
    if not path.is_dir():
        looks_hub = model.count("/") == 1 and not model.startswith((".", "/", "~"))
        raise UserError(
            f"{model} is not a local directory; FastDeploy would try to download it from a hub",
            hint=f"ernie-ops pull {model}" if looks_hub else "give the path of a checkpoint directory",
        )
    if (path / "lora_config.json").is_file() and not any(path.glob("model*.safetensors*")):
        raise UserError(
            f"{path} holds a LoRA adapter, not a model", hint="merge it first: ernie-ops export RUN_DIR"
        )
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(f"{path} has no config.json: not a checkpoint")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    arch = (config.get("architectures") or [""])[0]
    is_moe = bool(config.get("moe_num_experts"))
    return Target(path.resolve(), _catalog_match(config), "VL" in arch, is_moe, run_dir)


def _catalog_match(config: dict) -> ModelSpec | None:
    experts = config.get("moe_num_experts") or 0
    experts = experts[0] if isinstance(experts, list) else experts
    for spec in MODELS.values():
        if (spec.num_layers, spec.hidden_size, spec.num_experts) == (
            config.get("num_hidden_layers"),
            config.get("hidden_size"),
            experts,
        ):
            return spec
    return None


def check_checkpoint(target: Target) -> None:
    from ernie_ops.train.verify import verify_checkpoint

    report = verify_checkpoint(target.model_dir, forward=False)
    failed = [c for c in report.checks if c.status == "fail"]
    if failed:
        lines = "\n".join(f"  {c.name}: {c.detail}" for c in failed)
        raise UserError(
            f"{target.model_dir} does not pass verify:\n{lines}", hint=f"ernie-ops verify {target.model_dir}"
        )


def running_servers(directory: Path | None = None) -> list[dict]:
    """The recorded detached servers (alive or not), by port."""
    directory = directory or state_dir()
    out = []
    for path in sorted(directory.glob("*.json"), key=lambda p: (len(p.stem), p.stem)):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            out.append({**record, "state_file": str(path)})
    return out


def server_ports(profile, backend: str | None = None) -> dict[str, int]:
    """Every port the server binds, by profile key: FastDeploy four, the embedded server one."""
    ports = {"port": profile.port}
    if (backend or profile.backend) != "paddle":
        ports.update({k[2:].replace("-", "_"): v for k, v in profile.side_ports.items()})
    return ports


def check_ports(profile, directory: Path | None = None, only_main: bool = False) -> None:
    backend = "paddle" if only_main else "fastdeploy"
    host = profile.host or default_host(backend)
    for name, port in server_ports(profile, backend).items():
        if not port_free(host, port):
            raise UserError(f"{name} {port} is already in use", hint=f"set {name} to a free port")
    if only_main:
        return
    mine = profile.side_ports["--engine-worker-queue-port"]
    for other in running_servers(directory):
        command = other.get("command") or []
        flag = "--engine-worker-queue-port"
        theirs = int(command[command.index(flag) + 1]) if flag in command else None
        if theirs is not None and theirs % 256 == mine % 256:
            raise UserError(
                f"engine_worker_queue_port {mine} shares its low byte with {theirs} of the server on port "
                f"{other.get('port')}: FastDeploy builds before 2026-03 derive IPC keys from that byte and "
                "collide",
                hint="pick an engine_worker_queue_port whose value modulo 256 differs",
            )


def gpu_inventory() -> list[tuple[int, str, float]]:
    """(index, name, memory GiB) per GPU this process may use (`ernie_ops.devices`: NVML, with
    CUDA_VISIBLE_DEVICES applied), by the machine's index: FastDeploy's CUDA_VISIBLE_DEVICES is built
    from the profile's `gpus` in those terms."""
    from ernie_ops.devices import gpus

    return [(g.nvml_index, g.name, g.memory_gib) for g in gpus().gpus if not g.is_mig]


def plan_inputs(
    profile, target: Target, inventory: list[tuple[int, str, float]]
) -> tuple[ModelSpec, GpuSpec] | None:
    """Refuse a profile whose GPUs are not all in INVENTORY (`gpu_inventory()`); then what the
    planner plans on: the catalog model and the profile's first GPU (None: no catalog model)."""
    visible = {i for i, _, _ in inventory}
    missing = [g for g in profile.gpus if g not in visible]
    if missing:
        raise UserError(f"gpus {missing} are not visible here (visible: {sorted(visible)})")
    if target.spec is None:
        return None
    from ernie_ops.serve.gpus import gpu_from_smi

    name, memory = next((n, m) for i, n, m in inventory if i == profile.gpus[0])
    return target.spec, gpu_from_smi(name, memory)


def check_gpus(profile, target: Target) -> str | None:
    """Refuse what cannot start; return the planner's explanation when it fits."""
    inventory = gpu_inventory()
    if not inventory:
        from ernie_ops.devices import gpus

        why = gpus().reason
        raise UserError(
            "no GPU visible" + (f" ({why})" if why else "") + ": FastDeploy serves on GPUs only",
            hint="on this machine serve with the embedded CPU backend: --engine paddle",
        )
    fit = plan_inputs(profile, target, inventory)
    if fit is None:
        return None
    from ernie_ops.serve.planner import plan_serve

    spec, gpu = fit
    plan = plan_serve(
        spec,
        gpu,
        gpus=len(profile.gpus),
        quantization=profile.quantization if isinstance(profile.quantization, str) else "wint4",
        max_model_len=profile.max_model_len,
        max_num_seqs=profile.max_num_seqs,
        gpu_memory_utilization=profile.gpu_memory_utilization,
        tensor_parallel=profile.tensor_parallel_size,
    )
    if not plan.fits:
        raise UserError(
            f"the planner says this does not fit:\n{plan.explain()}",
            hint="quantize further, add GPUs (tensor_parallel_size), or lower max_model_len / max_num_seqs",
        )
    return plan.explain()
