"""Is this directory a servable ERNIE 4.5 checkpoint? Check it before anyone serves it.

Both layouts are understood: ERNIEKit's Paddle one (`ernie.*` names, Linear weights [in, out], fused
qkv / up_gate) and transformers' (`model.*`, [out, in], what `export --format hf` writes); the layout
is told by the tensor names and every later check follows it.

Everything but the forward pass reads only small files: config.json, the tokenizer files and the
safetensors *headers* (an 8-byte little-endian length, then a JSON header naming every tensor with
its dtype, shape and byte range), so a 300B checkpoint is checked in well under a second. The
forward pass loads the model with ERNIEKit's own class in a child process (Paddle stays out of this
one, and its memory goes back to the system when the child ends).

Run as a module (`python -m ernie_ops.train.verify --forward DIR`) it is that child process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.errors import UserError
from ernie_ops.text import strip_ansi

log = logging.getLogger(__name__)

CONFIG = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
GENERATION_CONFIG = "generation_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"

DENSE_ARCH = "Ernie4_5_ForCausalLM"
MOE_ARCH = "Ernie4_5_MoeForCausalLM"
VL_ARCH = "Ernie4_5_VLMoeForConditionalGeneration"
ARCHITECTURES = (DENSE_ARCH, MOE_ARCH, VL_ARCH)
PADDLE_LAYOUT, HF_LAYOUT = "paddle", "hf"  # ERNIEKit's tensor names, transformers' (train/hf_format.py)

# safetensors dtype codes -> (Paddle dtype name, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "U16": ("uint16", 2),
    "U32": ("uint32", 4),
    "U64": ("uint64", 8),
    "BOOL": ("bool", 1),
}
MAX_HEADER = 100 * 2**20  # a header this big means the file is not safetensors (or is corrupt)
FORWARD_TOKENS = 8
FORWARD_TIMEOUT = 1800.0
# The forward pass holds the fp32 weights about twice (the loaded state dict and the model's
# parameters) plus Paddle's own ~1 GiB; ask for that with room to spare before trying.
MEMORY_FACTOR = 2.5
MEMORY_OVERHEAD = 2**30
NEEDED_BY_FORWARD = (CONFIG, "weights", "shapes", "layers")
SHOWN = 5  # problems listed per check; the count says how many there are in all


@dataclass
class Check:
    name: str
    status: str  # ok | fail | skip
    detail: str = ""


@dataclass
class Tensor:
    name: str
    dtype: str  # safetensors code (F32, BF16, ...)
    shape: list[int]
    shard: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class VerifyReport:
    path: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def add(self, name: str, status: str, detail: str = "") -> Check:
        check = Check(name, status, detail)
        self.checks.append(check)
        return check

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


class HeaderError(ValueError):
    """A file that is not a readable safetensors file."""


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, data_offsets), without
    reading any tensor data. Raises HeaderError when the file is not safetensors or is truncated."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HeaderError(f"{path.name}: {size} bytes, too short for a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER, size - 8):
            raise HeaderError(f"{path.name}: header length {length} does not fit in a {size}-byte file")
        try:
            header: dict[str, Any] = json.loads(f.read(length))
        except ValueError as err:
            raise HeaderError(f"{path.name}: header is not JSON ({err})") from err
    data_bytes = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        end = info.get("data_offsets", [0, 0])[1]
        if end > data_bytes:  # a copy that stopped early still has a complete header
            raise HeaderError(f"{path.name}: truncated ({name} ends at byte {end} of {data_bytes})")
    return header


def weights_dtype(tensors: dict[str, Tensor]) -> str | None:
    """The Paddle dtype name of the checkpoint: that of its embedding (what config "dtype" means)."""
    embed = next((t for n, t in tensors.items() if n.endswith("embed_tokens.weight")), None)
    if embed is None:
        return None
    return DTYPES.get(embed.dtype, (embed.dtype.lower(), 0))[0]


def weight_files(path: Path) -> tuple[dict[str, str] | None, list[str]]:
    """(the index's tensor -> shard map or None, the shard files). UserError-free: problems are
    reported by `load_tensors`."""
    index = path / SAFE_INDEX
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return weight_map, sorted(set(weight_map.values()))
    if (path / SAFE_WEIGHTS).is_file():
        return None, [SAFE_WEIGHTS]
    return None, []


def load_tensors(path: Path) -> tuple[dict[str, Tensor], list[str]]:
    """Every tensor of the checkpoint from the safetensors headers, and the problems found:
    missing shards, unreadable or truncated files, tensors the index names but its shard lacks."""
    problems: list[str] = []
    try:
        weight_map, shards = weight_files(path)
    except (ValueError, KeyError, TypeError) as err:
        return {}, [f"{SAFE_INDEX} is not a valid index ({err!r})"]
    if not shards:
        others = sorted(p.name for p in path.glob("*.safetensors")) + sorted(
            p.name for p in path.glob("*.pdparams")
        )
        found = f" (found {', '.join(others[:SHOWN])})" if others else ""
        return {}, [f"no {SAFE_WEIGHTS} and no {SAFE_INDEX}{found}"]
    tensors: dict[str, Tensor] = {}
    for shard in shards:
        file = path / shard
        if not file.is_file():
            problems.append(f"shard {shard} is missing")
            continue
        try:
            header = read_safetensors_header(file)
        except (OSError, HeaderError) as err:
            problems.append(str(err))
            continue
        for name, info in header.items():
            if name != "__metadata__":
                tensors[name] = Tensor(name, info["dtype"], list(info["shape"]), shard)
    if weight_map is not None:
        readable = {s for s in shards if (path / s).is_file()}
        absent = [n for n, s in weight_map.items() if s in readable and n not in tensors]
        absent += [n for n, s in weight_map.items() if n in tensors and tensors[n].shard != s]
        if absent:
            problems.append(
                f"{len(absent)} tensor(s) named in the index are not in their shard: {_some(absent)}"
            )
    return tensors, problems


def _some(items: Iterable[str]) -> str:
    items = list(items)
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


# ---------------------------------------------------------------------------------------------
# what config.json implies about the tensors


@dataclass(frozen=True)
class Expected:
    """A tensor the config implies, with its shape. ERNIEKit stores Linear weights [in, out]."""

    name: str
    shape: tuple[int, ...]
    alternatives: tuple[tuple[str, tuple[int, ...]], ...] = ()  # unfused form: all of these instead


def is_moe(config: dict[str, Any]) -> bool:
    experts = config.get("moe_num_experts")
    if isinstance(experts, list | tuple):
        return sum(experts) > 0
    return bool(experts)


def _moe_layers(config: dict[str, Any]) -> set[int]:
    """The layers ERNIEKit builds as MoE (Ernie4_5_DecoderLayer's rule)."""
    layers = int(config["num_hidden_layers"])
    if not is_moe(config):
        return set()
    start = config.get("moe_layer_start_index", 0)
    end = config.get("moe_layer_end_index", -1)
    start = min(start) if isinstance(start, list | tuple) else start
    end = max(end) if isinstance(end, list | tuple) else end
    end = layers - 1 if end == -1 else end
    interval = config.get("moe_layer_interval", 2)
    return {i for i in range(layers) if (i + 1) % interval == 0 and start <= i <= end}


def expected_tensors(config: dict[str, Any], prefix: str) -> list[Expected]:
    """The tensors whose shapes follow from config.json (bias, MoE statistics, vision tower and
    multimodal experts are not derived)."""
    hidden, vocab = int(config["hidden_size"]), int(config["vocab_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    out: list[Expected] = [
        Expected(f"{prefix}embed_tokens.weight", (vocab, hidden)),
        Expected(f"{prefix}norm.weight", (hidden,)),
    ]
    if not config.get("tie_word_embeddings", False):  # ERNIEKit's default is untied
        out.append(Expected("lm_head.weight", (hidden, vocab)))
    moe_layers = _moe_layers(config)
    for i in range(int(config["num_hidden_layers"])):
        layer = f"{prefix}layers.{i}"
        out += [
            Expected(f"{layer}.input_layernorm.weight", (hidden,)),
            Expected(f"{layer}.post_attention_layernorm.weight", (hidden,)),
            Expected(
                f"{layer}.self_attn.qkv_proj.weight",
                (hidden, (heads + 2 * kv_heads) * head_dim),
                (
                    (f"{layer}.self_attn.q_proj.weight", (hidden, heads * head_dim)),
                    (f"{layer}.self_attn.k_proj.weight", (hidden, kv_heads * head_dim)),
                    (f"{layer}.self_attn.v_proj.weight", (hidden, kv_heads * head_dim)),
                ),
            ),
            Expected(f"{layer}.self_attn.o_proj.weight", (heads * head_dim, hidden)),
        ]
        if i in moe_layers:
            out += _expert_tensors(config, f"{layer}.mlp", hidden)
        else:
            out += _mlp_tensors(f"{layer}.mlp", hidden, inter)
    return out


def _mlp_tensors(prefix: str, hidden: int, inter: int) -> list[Expected]:
    return [
        Expected(
            f"{prefix}.up_gate_proj.weight",
            (hidden, 2 * inter),
            ((f"{prefix}.gate_proj.weight", (hidden, inter)), (f"{prefix}.up_proj.weight", (hidden, inter))),
        ),
        Expected(f"{prefix}.down_proj.weight", (inter, hidden)),
    ]


def _expert_tensors(config: dict[str, Any], prefix: str, hidden: int) -> list[Expected]:
    experts, inter = config.get("moe_num_experts"), config.get("moe_intermediate_size")
    if not isinstance(experts, int) or not isinstance(inter, int) or not inter:
        return []  # multimodal expert groups (VL): per-modality sizes, not derived here
    out = [Expected(f"{prefix}.gate.weight", (hidden, experts))]
    for e in range(experts):
        out += _mlp_tensors(f"{prefix}.experts.{e}", hidden, inter)
    shared = int(config.get("moe_num_shared_experts") or 0)
    if shared:
        out += _mlp_tensors(f"{prefix}.shared_experts", hidden, inter * shared)
    return out


def _model_prefix(tensors: dict[str, Tensor]) -> str | None:
    """`ernie.` for ERNIEKit / Paddle checkpoints (`model.` would be a PyTorch-named one)."""
    for name in tensors:
        if name.endswith("embed_tokens.weight") and "vision" not in name:
            return name[: -len("embed_tokens.weight")]
    return None


def shape_problems(config: dict[str, Any], tensors: dict[str, Tensor], prefix: str) -> tuple[list, list]:
    """(missing tensor names, shape mismatches as text)."""
    missing: list[str] = []
    wrong: list[str] = []

    def compare(name: str, shape: tuple[int, ...]) -> None:
        found = tuple(tensors[name].shape)
        if found != shape:
            flipped = " (transposed: [out, in] is PyTorch's layout)" if found == shape[::-1] else ""
            wrong.append(f"{name} {list(found)}, expected {list(shape)}{flipped}")

    for exp in expected_tensors(config, prefix):
        if exp.name in tensors:
            compare(exp.name, exp.shape)
        elif exp.alternatives and all(n in tensors for n, _ in exp.alternatives):
            for name, shape in exp.alternatives:
                compare(name, shape)
        else:
            missing.append(exp.name)
    if config.get("tie_word_embeddings") and "lm_head.weight" in tensors:
        # tied: ERNIEKit still stores the head, shaped like the embedding
        compare("lm_head.weight", (int(config["vocab_size"]), int(config["hidden_size"])))
    return missing, wrong


def expected_hf_tensors(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """The transformers tensors config.json implies: ERNIEKit's expectations through the conversion
    table (so both layouts are checked by one description), plus the MoE correction bias, which
    transformers and vLLM need in the file."""
    from ernie_ops.train.hf_format import Dims, paddle_to_hf

    dims = Dims.of(config)
    out: list[tuple[str, tuple[int, ...]]] = []
    for exp in expected_tensors(config, "ernie."):
        out += [(name, shape) for name, shape, _ in paddle_to_hf(exp.name, exp.shape, dims)]
        if exp.name.endswith(".mlp.gate.weight"):
            layer = exp.name[len("ernie.") : -len(".gate.weight")]
            out.append((f"model.{layer}.moe_statics.e_score_correction_bias", (1, exp.shape[1])))
    return out


def hf_shape_problems(config: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[list, list]:
    """(missing tensor names, shape mismatches as text) for a transformers-layout checkpoint."""
    missing: list[str] = []
    wrong: list[str] = []
    expected = expected_hf_tensors(config)
    if config.get("tie_word_embeddings") and "lm_head.weight" in tensors:
        expected.append(("lm_head.weight", (int(config["vocab_size"]), int(config["hidden_size"]))))
    for name, shape in expected:
        if name not in tensors:
            missing.append(name)
            continue
        found = tuple(tensors[name].shape)
        if found != shape:
            flipped = " (transposed: [in, out] is Paddle's layout)" if found == shape[::-1] else ""
            wrong.append(f"{name} {list(found)}, expected {list(shape)}{flipped}")
    return missing, wrong


def missing_layers(config: dict[str, Any], tensors: dict[str, Tensor], prefix: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}layers\.(\d+)\.")
    present = {int(m.group(1)) for n in tensors if (m := pattern.match(n))}
    return [i for i in range(int(config["num_hidden_layers"])) if i not in present]


# ---------------------------------------------------------------------------------------------
# the checks


def verify_checkpoint(path: Path | str, forward: bool = True) -> VerifyReport:
    """Check a checkpoint directory; every check is reported, none stops the others."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"{path} is not a directory",
            hint="give a checkpoint directory (config.json, model.safetensors, tokenizer files)",
        )
    report = VerifyReport(str(path.resolve()))
    layout = _check_layout(path, report)
    config = _check_config(path, report, layout)
    tensors = _check_weights(path, config, report, layout)
    _check_tokenizer(path, report, layout)
    gen = path / GENERATION_CONFIG
    report.add(GENERATION_CONFIG, "ok" if gen.is_file() else "fail", "" if gen.is_file() else "missing")
    arch = _architecture(config)
    if arch == VL_ARCH:
        pre = path / PREPROCESSOR_CONFIG
        report.add(PREPROCESSOR_CONFIG, "ok" if pre.is_file() else "fail", "" if pre.is_file() else "missing")
    if not forward:
        report.add("forward", "skip", "--no-forward")
    elif config is None or any(c.status == "fail" for c in report.checks if c.name in NEEDED_BY_FORWARD):
        report.add("forward", "skip", f"needs {', '.join(NEEDED_BY_FORWARD)} to pass")
    elif layout == HF_LAYOUT:
        _check_forward(path, tensors, report, layout)
    elif arch == VL_ARCH or is_moe(config):
        report.add("forward", "skip", "MoE: ERNIEKit's MoE dispatch kernels are GPU-only on Paddle CPU")
    else:
        _check_forward(path, tensors, report, layout)
    return report


def _check_layout(path: Path, report: VerifyReport) -> str | None:
    """Which tensor names the checkpoint uses: ERNIEKit's (`ernie.`, Paddle) or transformers'
    (`model.`); everything after is checked against that layout."""
    from ernie_ops.train.hf_format import detect_layout

    tensors, problems = load_tensors(path)
    layout = detect_layout(tensors)
    if layout == PADDLE_LAYOUT:
        report.add("layout", "ok", "paddle (ERNIEKit tensor names)")
    elif layout == HF_LAYOUT:
        report.add("layout", "ok", "hf (transformers tensor names)")
    elif tensors and not problems:
        report.add("layout", "fail", "neither ERNIEKit's (ernie.*) nor transformers' (model.*) tensor names")
    else:  # the weights check says what is wrong with them
        report.add("layout", "skip", "needs readable weights")
    return layout


def _architecture(config: dict[str, Any] | None) -> str | None:
    archs = (config or {}).get("architectures") or [None]
    return archs[0] if isinstance(archs, list) else None


def _check_config(path: Path, report: VerifyReport, layout: str | None = None) -> dict[str, Any] | None:
    file = path / CONFIG
    if not file.is_file():
        report.add(CONFIG, "fail", "missing")
        return None
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        for key in ("hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads"):
            int(config[key])
    except (ValueError, KeyError, TypeError) as err:
        report.add(CONFIG, "fail", f"unreadable ({err!r})")
        return None
    report.add(CONFIG, "ok", f"{config.get('model_type', '?')}, {config['num_hidden_layers']} layers")
    if layout == HF_LAYOUT:
        _check_hf_config(config, report)
        return config
    if "torch_dtype" in config:
        report.add("paddle config", "fail", 'has "torch_dtype": a PyTorch (Hugging Face) config, not Paddle')
    elif "dtype" not in config:
        report.add("paddle config", "fail", 'no "dtype" (Paddle loaders read it to create the parameters)')
    else:
        report.add("paddle config", "ok", f"dtype {config['dtype']}")
    arch = _architecture(config)
    if arch in ARCHITECTURES:
        report.add("architecture", "ok", str(arch))
    else:
        report.add("architecture", "fail", f"{arch!r}, expected one of {', '.join(ARCHITECTURES)}")
    return config


def _check_hf_config(config: dict[str, Any], report: VerifyReport) -> None:
    from ernie_ops.train.hf_format import HF_ARCHITECTURES

    arch = _architecture(config)
    model_type = "ernie4_5_moe" if arch == MOE_ARCH else "ernie4_5"
    if arch not in HF_ARCHITECTURES:
        hint = (
            " (Paddle's name: transformers and vLLM know Ernie4_5ForCausalLM)" if arch == DENSE_ARCH else ""
        )
        report.add("architecture", "fail", f"{arch!r}, expected one of {', '.join(HF_ARCHITECTURES)}{hint}")
    elif config.get("model_type") != model_type:
        report.add(
            "architecture", "fail", f"{arch} with model_type {config.get('model_type')!r}, not {model_type}"
        )
    else:
        report.add("architecture", "ok", f"{arch} (transformers)")


def _check_weights(
    path: Path, config: dict[str, Any] | None, report: VerifyReport, layout: str | None = None
) -> dict[str, Tensor]:
    tensors, problems = load_tensors(path)
    if problems:
        report.add("weights", "fail", "; ".join(problems))
    else:
        size = sum(t.numel * DTYPES.get(t.dtype, ("", 0))[1] for t in tensors.values())
        _, shards = weight_files(path)
        report.add(
            "weights",
            "ok",
            f"{len(tensors)} tensors in {len(shards)} file(s), {weights_dtype(tensors)}, {_size(size)}",
        )
    if config is None or not tensors:
        report.add("shapes", "skip", "needs config.json and readable weights")
        report.add("layers", "skip", "needs config.json and readable weights")
        return tensors
    prefix = _model_prefix(tensors)
    if prefix is None:
        report.add("shapes", "fail", "no embed_tokens.weight tensor")
        report.add("layers", "skip", "no model prefix (no embed_tokens.weight)")
        return tensors
    if layout == HF_LAYOUT:
        missing, wrong = hf_shape_problems(config, tensors)
    else:
        missing, wrong = shape_problems(config, tensors, prefix)
    if missing or wrong:
        parts = ([f"{len(missing)} missing: {_some(missing)}"] if missing else []) + (
            [f"{len(wrong)} wrong: {_some(wrong)}"] if wrong else []
        )
        report.add("shapes", "fail", "; ".join(parts))
    else:
        count = len(expected_hf_tensors(config) if layout == HF_LAYOUT else expected_tensors(config, prefix))
        report.add("shapes", "ok", f"{count} tensors match config.json")
    absent = missing_layers(config, tensors, prefix)
    layers = int(config["num_hidden_layers"])
    if absent:
        report.add("layers", "fail", f"{len(absent)} of {layers} missing: {_some(map(str, absent))}")
    else:
        report.add("layers", "ok", f"0..{layers - 1}")
    return tensors


def _check_tokenizer(path: Path, report: VerifyReport, layout: str | None = None) -> None:
    missing = [name for name in TOKENIZER_FILES if not (path / name).is_file()]
    if layout == HF_LAYOUT:  # transformers reads a tokenizer.json as well as the sentencepiece model
        missing = [name for name in ("tokenizer_config.json",) if not (path / name).is_file()]
        if not (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").is_file():
            missing.append("tokenizer.model (or tokenizer.json)")
    report.add("tokenizer", "fail" if missing else "ok", f"missing {', '.join(missing)}" if missing else "")
    file = path / "tokenizer_config.json"
    if not file.is_file():
        report.add("chat template", "skip", "no tokenizer_config.json")
        return
    try:
        template = json.loads(file.read_text(encoding="utf-8")).get("chat_template")
    except (ValueError, AttributeError) as err:
        report.add("chat template", "fail", f"tokenizer_config.json unreadable ({err!r})")
        return
    if template:
        report.add("chat template", "ok", f"{len(template)} characters")
    else:
        report.add(
            "chat template",
            "fail",
            "tokenizer_config.json has no chat_template (chat requests and ERNIEKit's data "
            "pipeline both need it)",
        )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def available_memory() -> int | None:
    """MemAvailable in bytes, or None where /proc/meminfo is not there (not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_forward(
    path: Path, tensors: dict[str, Tensor], report: VerifyReport, layout: str | None = PADDLE_LAYOUT
) -> None:
    if layout == HF_LAYOUT:
        import importlib.util

        if not all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
            report.add(
                "forward", "skip", "transformers layout: needs the `torch` extra (torch, transformers)"
            )
            return
    need = int(sum(t.numel for t in tensors.values()) * 4 * MEMORY_FACTOR) + MEMORY_OVERHEAD  # fp32
    have = available_memory()
    if have is None:
        report.add("forward", "skip", "cannot read MemAvailable from /proc/meminfo")
        return
    if need > have:
        report.add("forward", "skip", f"needs about {_size(need)}, {_size(have)} available")
        return
    who = "transformers'" if layout == HF_LAYOUT else "ERNIEKit's"
    log.info("forward pass on CPU: loading %s with %s model class", path, who)
    cmd = [sys.executable, "-m", "ernie_ops.train.verify", "--forward", str(path)]
    if layout == HF_LAYOUT:
        cmd += ["--layout", HF_LAYOUT]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=FORWARD_TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        report.add("forward", "fail", f"no result after {FORWARD_TIMEOUT:.0f} s")
        return
    lines = result.stdout.strip().splitlines()
    try:
        outcome = json.loads(lines[-1]) if lines else None
    except ValueError:
        outcome = None
    if result.returncode != 0 or not isinstance(outcome, dict):
        report.add("forward", "fail", f"the model did not run: {_tail(result.stderr)}")
        return
    report.add("forward", "ok" if outcome["ok"] else "fail", outcome["detail"])


def _tail(text: str, lines: int = 3) -> str:
    kept = [strip_ansi(line).strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"


# ---------------------------------------------------------------------------------------------
# the child process: load with ERNIEKit's class, run a few tokens, report as one JSON line


def forward_pass(path: Path, n: int = FORWARD_TOKENS) -> dict[str, Any]:
    from ernie_ops.extras import optional_imports

    with optional_imports("cpu", "the forward pass of verify"):
        import paddle
        from ernie.modeling_moe import Ernie4_5_MoeForCausalLM

    paddle.set_device("cpu")
    config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    vocab = int(config["vocab_size"])
    start = time.perf_counter()
    # fp32: Paddle's CPU kernels lack bf16 for inference (no bf16 `where`)
    model = Ernie4_5_MoeForCausalLM.from_pretrained(str(path), moe_group="dummy", dtype="float32")
    model.eval()
    # from_pretrained re-initialises what the checkpoint lacks with a log line and goes on: a
    # forward pass over random weights proves nothing, so say which ones
    stored, _ = load_tensors(path)
    random_init = sorted(k for k in model.state_dict() if k not in stored)
    if random_init:
        return {"ok": False, "detail": f"weights not in the checkpoint: {_some(random_init)}"}
    ids = paddle.to_tensor([[(7 * i + 3) % vocab for i in range(n)]], dtype="int64")
    mask = paddle.tril(paddle.ones([n, n], dtype="bool"))[None, None]  # ERNIEKit needs it explicit
    with paddle.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, return_dict=True).logits
    shape = list(logits.shape)
    finite = bool(paddle.isfinite(logits).all())
    seconds = time.perf_counter() - start
    if shape != [1, n, vocab]:
        return {"ok": False, "detail": f"logits {shape}, expected {[1, n, vocab]}"}
    if not finite:
        return {"ok": False, "detail": f"logits {shape} contain NaN or Inf"}
    return {"ok": True, "detail": f"{n} tokens -> logits {shape}, finite ({seconds:.1f} s)"}


def forward_pass_hf(path: Path, n: int = FORWARD_TOKENS) -> dict[str, Any]:
    """The forward pass of a transformers-layout checkpoint, with transformers' own classes."""
    import torch  # the parent checked that the `torch` extra is installed
    from transformers import AutoModelForCausalLM

    config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    vocab = int(config["vocab_size"])
    start = time.perf_counter()
    loaded: Any = AutoModelForCausalLM.from_pretrained(
        str(path), torch_dtype=torch.float32, output_loading_info=True
    )
    model, info = loaded
    model.eval()
    # transformers initialises what the checkpoint lacks (and drops what it does not know) with a
    # warning: either means the names are wrong
    bad = [f"{k}: {_some(v)}" for k, v in info.items() if v and k != "error_msgs"]
    if bad:
        return {"ok": False, "detail": "loading: " + "; ".join(bad)}
    ids = torch.tensor([[(7 * i + 3) % vocab for i in range(n)]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    shape = list(logits.shape)
    seconds = time.perf_counter() - start
    if shape != [1, n, vocab]:
        return {"ok": False, "detail": f"logits {shape}, expected {[1, n, vocab]}"}
    if not bool(torch.isfinite(logits).all()):
        return {"ok": False, "detail": f"logits {shape} contain NaN or Inf"}
    name = type(model).__name__
    return {"ok": True, "detail": f"{name}: {n} tokens -> logits {shape}, finite ({seconds:.1f} s)"}


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="verify's forward pass (a child process)")
    parser.add_argument("--forward", type=Path, required=True, metavar="DIR")
    parser.add_argument("--tokens", type=int, default=FORWARD_TOKENS)
    parser.add_argument("--layout", choices=(PADDLE_LAYOUT, HF_LAYOUT), default=PADDLE_LAYOUT)
    args = parser.parse_args(argv)
    run = forward_pass_hf if args.layout == HF_LAYOUT else forward_pass
    print(json.dumps(run(args.forward, args.tokens)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
