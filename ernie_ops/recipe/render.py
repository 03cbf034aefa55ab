"""Render a library entry as a plain ERNIEKit YAML file with a header that says how to run it."""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml

from ernie_ops.recipe.library import GPU_GB, RECIPES_DIR, Entry
from ernie_ops.recipe.schema import load_schema

SECTIONS = (("DataArguments", "data"), ("ModelArguments", "model"), ("FinetuningArguments", "training"))
METHOD_NAMES = {
    "sft": "SFT (full fine-tuning)",
    "sft-lora": "SFT with LoRA",
    "sft-wint4-lora": "SFT with LoRA on a weight-only INT4/INT8 base (compute_type wint4/8)",
    "dpo": "DPO (full)",
    "dpo-lora": "DPO with LoRA",
    "dpo-wint4-lora": "DPO with LoRA on a weight-only INT4/INT8 base (compute_type wint4/8)",
    "fc": "function-call SFT (chatml data: messages + tools)",
    "fc-lora": "function-call SFT with LoRA (chatml data: messages + tools)",
}


@cache
def _groups() -> dict[str, str]:
    """key -> section title, from the newest schema (a superset of the older ones)."""
    schema = load_schema("1.3.0")
    titles = dict(SECTIONS)
    return {name: titles.get(f.groups[0], "training") for name, f in schema.fields.items()}


def relative(entry: Entry) -> str:
    return str(entry.path.relative_to(RECIPES_DIR.parent))


def header(entry: Entry) -> list[str]:
    path = relative(entry)
    if entry.model == "tiny":
        return [
            f"# Tiny random ERNIE 4.5 model · {METHOD_NAMES[entry.method]} · on a CPU, in seconds",
            "# The plumbing check any machine can run: same ERNIEKit workflow, toy sizes, CPU settings.",
            "#",
            "#   ernie-ops tiny-model runs/tiny-dense",
            f"#   ernie-ops check {path}",
            f"#   python -m erniekit.launcher train {path}",
            f"#   ernie-ops train {path}",
            "#",
            "# (`erniekit train` assumes a GPU; `python -m erniekit.launcher` is its one-process CPU path.)",
        ]
    gpus = entry.min_gpus
    nodes = max(1, gpus // 8)
    devices = ",".join(str(i) for i in range(min(gpus, 8)))
    tp = entry.settings.get("tensor_parallel_degree", 1)
    pp = entry.settings.get("pipeline_parallel_degree", 1)
    lines = [
        f"# {entry.model} · {METHOD_NAMES[entry.method]} · {entry.seq // 1024}K context",
        f"# Minimum: {gpus} x {GPU_GB} GB GPU{'s' if gpus > 1 else ''}"
        + (f" ({nodes} nodes x 8)" if nodes > 1 else "")
        + f"; tensor parallel {tp}, pipeline parallel {pp}, the rest data parallel (sharding stage1).",
    ]
    if entry.erniekit:
        lines.append(
            f"# Needs ERNIEKit {entry.erniekit} (install from source on GPU nodes: scripts/setup_gpu.sh)."
        )
    lines += [
        "# Settings: ERNIEKit's published example for this model and method"
        + (", except:" if entry.deviations else "."),
        *(f"#   {note}" for note in entry.deviations),
        "#",
        "# 1. Download the model (ERNIEKit reads a local directory; it does not download):",
        f"#   ernie-ops pull {entry.hub_id}   # to ./{entry.hub_id}, where this recipe looks",
        "# 2. Check, then train, from the repository root:",
        f"#   ernie-ops check {path} --gpus {min(gpus, 8)}" + (f" --nnodes {nodes}" if nodes > 1 else ""),
    ]
    if nodes > 1:
        lines += [
            "#   # on each of the nodes:",
            f"#   NNODES={nodes} MASTER_ADDR=<node 0 IP> MASTER_PORT=8080 CUDA_VISIBLE_DEVICES={devices} \\",
            f"#     erniekit train {path}",
            f"#   ernie-ops train {path} --gpus {devices} --nnodes {nodes} --master <node 0 IP>:8080",
        ]
    else:
        lines += [
            f"#   CUDA_VISIBLE_DEVICES={devices} erniekit train {path}",
            f"#   ernie-ops train {path} --gpus {devices}",
        ]
    lines += [
        "# Your own data: append train_dataset_path=... eval_dataset_path=... to either command, or",
        f"#   ernie-ops recipes new --model {entry.model} --method {entry.method} --seq {entry.seq} \\",
        "#     --train my-train.jsonl --eval my-eval.jsonl -o my.yaml",
    ]
    return lines


def _dump(key: str, value: Any) -> str:
    if isinstance(value, list):  # short lists read best on one line
        return f"{key}: " + yaml.safe_dump(value, default_flow_style=True, width=400).rstrip("\n")
    return yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False, width=400).rstrip("\n")


def render(entry: Entry, settings: dict[str, Any] | None = None, *, title: list[str] | None = None) -> str:
    """The YAML text of `entry` (or of `settings` laid out the same way), header first."""
    settings = entry.settings if settings is None else settings
    groups = _groups()
    out = [*(title if title is not None else header(entry))]
    for _, section in SECTIONS:
        keys = [k for k in settings if groups.get(k, "training") == section]
        if keys:
            out += ["", f"### {section}", *(_dump(k, settings[k]) for k in keys)]
    meta_block: dict[str, Any] = {"method": entry.method, "context": entry.seq}
    if entry.model != "tiny":
        meta_block = {"model": entry.model, **meta_block, "min_gpus": entry.min_gpus, "gpu_memory_gb": GPU_GB}
    if entry.erniekit:
        meta_block["erniekit"] = entry.erniekit
    out += [
        "",
        "### ernie-ops metadata (ERNIEKit ignores this block)",
        yaml.safe_dump({"ernie_ops": meta_block}, sort_keys=False).rstrip("\n"),
    ]
    return "\n".join(out) + "\n"
