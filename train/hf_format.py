"""The transformers layout of an ERNIE 4.5 text checkpoint, from ERNIEKit's Paddle layout (and back).

ERNIEKit (Paddle) and transformers (`Ernie4_5ForCausalLM`, `Ernie4_5_MoeForCausalLM`; vLLM, SGLang
and llama.cpp's converter read the same layout) store the same numbers under different names and
orientations. The facts, from ERNIEKit's model code, transformers' `modeling_ernie4_5(_moe).py` and
Baidu's own Paddle-to-PyTorch converter (ERNIE repository, tools/paddle2torch):

- prefix `ernie.` <-> `model.`; `lm_head.weight` keeps its name.
- Paddle `Linear` weights are [in, out], PyTorch ones [out, in]: every projection is transposed
  (q/k/v/o, gate/up/down, the MoE router `mlp.gate`, MTP's `mtp_linear_proj`).
- `self_attn.qkv_proj` is [hidden, (heads + 2 * kv_heads) * head_dim] with q, k, v side by side
  (ERNIEKit splits the output at num_heads, kv_heads, kv_heads); transformers has q_proj, k_proj,
  v_proj. `mlp.up_gate_proj` is [hidden, 2 * intermediate], the first half through SiLU (ERNIEKit:
  `gate, x = up_gate_proj(x).chunk(2)`): transformers' gate_proj, then up_proj.
- `lm_head.weight`: ERNIEKit stores it [vocab, hidden] when the embeddings are tied (used with
  transpose_y) and [hidden, vocab] when not; transformers always [vocab, hidden].
- RoPE is the interleaved (GPT-J) form in both, so q and k need no row permutation.
- The MoE router (`mlp.gate.weight`) and `mlp.moe_statics.e_score_correction_bias` [1, experts]
  stay float32 (transformers' `_keep_in_fp32_modules_strict`). A checkpoint trained without the
  correction bias (moe_use_aux_free false) routes as with a zero bias, and gets zeros: vLLM creates
  the parameter uninitialised and would otherwise route on garbage.

The conversion streams: each output shard's safetensors header is computed from the plan, then its
tensors are read one at a time (plain reads, no mmap: resident memory stays one source tensor and
its converted copy), converted and appended. Everything is written into a staging directory beside
the target, which is renamed into place only when complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ernie_ops.catalog import GENERATION_DEFAULTS
from ernie_ops.errors import UserError
from ernie_ops.train.verify import (
    CONFIG,
    DENSE_ARCH,
    DTYPES,
    GENERATION_CONFIG,
    MOE_ARCH,
    SAFE_INDEX,
    SAFE_WEIGHTS,
    VL_ARCH,
    HeaderError,
    Tensor,
    is_moe,
    load_tensors,
    read_safetensors_header,
    weights_dtype,
)

log = logging.getLogger(__name__)

PADDLE, HF = "paddle", "hf"
LAYOUTS = (PADDLE, HF)
PADDLE_PREFIX, HF_PREFIX = "ernie.", "model."
HF_DENSE_ARCH = "Ernie4_5ForCausalLM"  # transformers' and vLLM's name (Paddle's is Ernie4_5_ForCausalLM)
HF_MOE_ARCH = MOE_ARCH
HF_ARCHITECTURES = (HF_DENSE_ARCH, HF_MOE_ARCH)
DEFAULT_SHARD_BYTES = 5 * 10**9  # transformers' save_pretrained default
MODEL_CARD = "README.md"
FP32_NAMES = re.compile(r"(\.mlp\.gate\.weight|\.moe_statics\.e_score_correction_bias)$")
ALIGN = 8  # safetensors pads its header so that tensor data starts 8-byte aligned

# numpy types used to move elements: any type of the right width will do, except where values are
# computed (the float32 cast of the router), which needs the real type
_MOVE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _real_dtype(code: str) -> np.dtype:
    if code == "BF16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(DTYPES[code][0])


# ---------------------------------------------------------------------------------------------
# which layout is this


def detect_layout(names: Iterable[str]) -> str | None:
    """`paddle` for ERNIEKit's names (`ernie.`), `hf` for transformers' (`model.`), else None."""
    for name in names:
        if name.endswith("embed_tokens.weight") and "vision" not in name:
            if name.startswith(PADDLE_PREFIX):
                return PADDLE
            if name.startswith(HF_PREFIX):
                return HF
    return None


def checkpoint_layout(path: Path) -> str | None:
    tensors, _ = load_tensors(path)
    return detect_layout(tensors)


# ---------------------------------------------------------------------------------------------
# the tensor table


@dataclass(frozen=True)
class Piece:
    """Part of an output tensor: `source[..., lo:hi]` (the whole tensor when hi is None), then
    transposed if asked. An output is its pieces concatenated along the last axis."""

    source: str
    transpose: bool = False
    lo: int = 0
    hi: int | None = None


@dataclass
class Planned:
    name: str
    dtype: str  # safetensors code of the output
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...] = ()  # none: zeros (a tensor the source lacks, see the module doc)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][1]


@dataclass(frozen=True)
class Dims:
    """What the split points of the fused tensors depend on."""

    q: int  # num_heads * head_dim
    kv: int  # num_kv_heads * head_dim
    tied: bool

    @classmethod
    def of(cls, config: dict[str, Any]) -> Dims:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        return cls(heads * head_dim, kv_heads * head_dim, bool(config.get("tie_word_embeddings", False)))


LINEAR = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|gate|mtp_linear_proj\.\d+)"
NORM = r"(input_layernorm|post_attention_layernorm|norm|mtp_emb_norm\.\d+|mtp_hidden_norm\.\d+)"
_LINEAR_WEIGHT = re.compile(rf"(^|\.){LINEAR}\.weight$")
_COPIED = re.compile(
    rf"((^|\.){LINEAR}\.bias|(^|\.){NORM}\.(weight|bias)|\.moe_statics\.e_score_correction_bias"
    r"|(^|\.)embed_tokens\.weight)$"
)


class UnknownTensor(ValueError):
    """A tensor the table has no rule for: converting it by a guess could serve a broken model."""


def paddle_to_hf(name: str, shape: tuple[int, ...], dims: Dims) -> list[tuple[str, tuple[int, ...], Piece]]:
    """The transformers tensors one ERNIEKit tensor becomes: (name, shape, how)."""
    if name.startswith(PADDLE_PREFIX):
        out = HF_PREFIX + name[len(PADDLE_PREFIX) :]
    elif name.startswith("lm_head."):
        out = name
    else:
        raise UnknownTensor(name)
    if name == "lm_head.weight":
        if dims.tied:  # [vocab, hidden] already
            return [(out, shape, Piece(name))]
        return [(out, shape[::-1], Piece(name, transpose=True))]
    if out.endswith("self_attn.qkv_proj.weight") or out.endswith("self_attn.qkv_proj.bias"):
        bounds = [(0, dims.q), (dims.q, dims.q + dims.kv), (dims.q + dims.kv, dims.q + 2 * dims.kv)]
        if shape[-1] != dims.q + 2 * dims.kv:
            raise UnknownTensor(f"{name} {list(shape)}: not [.., q + 2 kv = {dims.q + 2 * dims.kv}]")
        return [
            _part(name, out.replace("qkv_proj", f"{p}_proj"), shape, lo, hi)
            for p, (lo, hi) in zip("qkv", bounds, strict=True)
        ]
    if out.endswith("up_gate_proj.weight") or out.endswith("up_gate_proj.bias"):
        half = shape[-1] // 2
        return [
            _part(name, out.replace("up_gate_proj", "gate_proj"), shape, 0, half),
            _part(name, out.replace("up_gate_proj", "up_proj"), shape, half, 2 * half),
        ]
    if _LINEAR_WEIGHT.search(out) and len(shape) == 2:
        return [(out, shape[::-1], Piece(name, transpose=True))]
    if _COPIED.search(out):
        return [(out, shape, Piece(name))]
    raise UnknownTensor(name)


def _part(
    source: str, out: str, shape: tuple[int, ...], lo: int, hi: int
) -> tuple[str, tuple[int, ...], Piece]:
    if len(shape) == 1:  # a bias: a range of it
        return out, (hi - lo,), Piece(source, lo=lo, hi=hi)
    return out, (hi - lo, shape[0]), Piece(source, transpose=True, lo=lo, hi=hi)


_FUSED_BACK = (
    (re.compile(r"^(.*\.self_attn\.)(q_proj|k_proj|v_proj)\.(weight|bias)$"), "qkv_proj", ("q", "k", "v")),
    (re.compile(r"^(.*\.)(gate_proj|up_proj)\.(weight|bias)$"), "up_gate_proj", ("gate", "up")),
)


def hf_to_paddle(tensors: dict[str, tuple[int, ...]], dims: Dims) -> list[Planned]:
    """The ERNIEKit tensors a transformers checkpoint becomes (dtype filled in by the caller)."""
    planned: dict[str, Planned] = {}
    for name, shape in tensors.items():
        if name.startswith(HF_PREFIX):
            out = PADDLE_PREFIX + name[len(HF_PREFIX) :]
        elif name.startswith("lm_head."):
            out = name
        else:
            raise UnknownTensor(name)
        if name == "lm_head.weight":
            flip = not dims.tied
            planned[out] = Planned(out, "", shape[::-1] if flip else shape, (Piece(name, transpose=flip),))
            continue
        for pattern, fused, parts in _FUSED_BACK:
            m = pattern.match(out)
            if m:
                target = f"{m.group(1)}{fused}.{m.group(3)}"
                order = [f"{p}_proj" for p in parts]
                sources = [f"{name[: -len(m.group(2) + '.' + m.group(3))]}{p}.{m.group(3)}" for p in order]
                if target not in planned:
                    missing = [s for s in sources if s not in tensors]
                    if missing:
                        raise UnknownTensor(f"{name}: {', '.join(missing)} missing to build {target}")
                    shapes = [tensors[s] for s in sources]
                    if len(shape) == 1:
                        new: tuple[int, ...] = (sum(s[0] for s in shapes),)
                    else:
                        new = (shape[1], sum(s[0] for s in shapes))
                    pieces = tuple(Piece(s, transpose=len(shape) == 2) for s in sources)
                    planned[target] = Planned(target, "", new, pieces)
                break
        else:
            if _LINEAR_WEIGHT.search(out) and len(shape) == 2:
                planned[out] = Planned(out, "", shape[::-1], (Piece(name, transpose=True),))
            elif _COPIED.search(out):
                planned[out] = Planned(out, "", shape, (Piece(name),))
            else:
                raise UnknownTensor(name)
    return list(planned.values())


# ---------------------------------------------------------------------------------------------
# configs


class Unsupported(UserError):
    pass


def hf_config(config: dict[str, Any], dtype: str | None) -> dict[str, Any]:
    """transformers' config.json (Ernie4_5Config / Ernie4_5_MoeConfig) for an ERNIEKit config.json.
    Every value whose ERNIEKit default differs from transformers' is written out explicitly."""
    _refuse_unsupported(config)
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    out: dict[str, Any] = {
        "architectures": [HF_MOE_ARCH if is_moe(config) else HF_DENSE_ARCH],
        "model_type": "ernie4_5_moe" if is_moe(config) else "ernie4_5",
        "vocab_size": int(config["vocab_size"]),
        "hidden_size": int(config["hidden_size"]),
        "intermediate_size": int(config["intermediate_size"]),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(config.get("num_key_value_heads") or heads),
        "head_dim": int(config.get("head_dim") or int(config["hidden_size"]) // heads),
        "hidden_act": "silu",  # ERNIEKit's MLP is SwiGLU whatever hidden_act says
        "max_position_embeddings": int(config.get("max_position_embeddings", 32768)),
        "rms_norm_eps": float(config.get("rms_norm_eps", 1e-6)),  # ERNIEKit's defaults
        "rope_theta": float(config.get("rope_theta", 10000)),
        "rope_scaling": None,
        "use_bias": bool(config.get("use_bias", False)),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "pad_token_id": config.get("pad_token_id", 0),
        "bos_token_id": config.get("bos_token_id", 1),
        "eos_token_id": config.get("eos_token_id", 2),
        "use_cache": True,
    }
    if is_moe(config):
        end = config.get("moe_layer_end_index", -1)
        out.update(
            moe_num_experts=int(config["moe_num_experts"]),
            moe_k=int(config.get("moe_k", 2)),
            moe_intermediate_size=int(config["moe_intermediate_size"]),
            moe_num_shared_experts=int(config.get("moe_num_shared_experts") or 0),
            moe_layer_start_index=int(config.get("moe_layer_start_index", 0)),
            moe_layer_end_index=layers - 1 if end == -1 else int(end),
            moe_layer_interval=int(config.get("moe_layer_interval", 2)),
            moe_norm_min=1e-12,  # ERNIEKit's clip of the top-k weight sum
        )
    if config.get("num_nextn_predict_layers"):  # MTP weights are exported too (vLLM's ernie_mtp)
        out["num_nextn_predict_layers"] = int(config["num_nextn_predict_layers"])
    if dtype:
        out["torch_dtype"] = dtype
    return out


def _refuse_unsupported(config: dict[str, Any]) -> None:
    arch = (config.get("architectures") or [None])[0]
    reasons = []
    if arch == VL_ARCH or isinstance(config.get("moe_num_experts"), list | tuple) or config.get("rope_3d"):
        reasons.append("a vision-language (VL) model: only ERNIE 4.5 text models are converted")
    if float(config.get("compression_ratio", 1.0)) != 1.0:
        reasons.append(f"compression_ratio {config['compression_ratio']} (RoPE position compression)")
    if config.get("use_rmsnorm", True) is False:
        reasons.append("use_rmsnorm false (LayerNorm)")
    if is_moe(config):
        if config.get("moe_gate_act", "softmax") != "softmax":
            reasons.append(f"moe_gate_act {config['moe_gate_act']!r} (transformers routes on softmax)")
        if config.get("moe_norm_gate_logits", True) is False:
            reasons.append("moe_norm_gate_logits false (transformers normalises the top-k weights)")
        if config.get("moe_group_experts"):
            reasons.append("moe_group_experts true (grouped routing)")
    if reasons:
        raise Unsupported(
            "this checkpoint has no transformers equivalent: " + "; ".join(reasons),
            hint="transformers' Ernie4_5 / Ernie4_5_Moe classes implement ERNIE 4.5's text models only",
        )


def paddle_config(config: dict[str, Any]) -> dict[str, Any]:
    """ERNIEKit's config.json for a transformers one: transformers' values, with every key whose
    ERNIEKit default differs written out."""
    out = {k: v for k, v in config.items() if k not in ("torch_dtype", "dtype", "transformers_version")}
    dtype = config.get("torch_dtype") or config.get("dtype")
    heads = int(config["num_attention_heads"])
    moe = is_moe(config)
    out.update(
        architectures=[MOE_ARCH if moe else DENSE_ARCH],
        model_type="ernie4_5_moe" if moe else "ernie4_5",
        num_key_value_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),  # transformers' default
        rope_theta=float(config.get("rope_theta", 500000.0)),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        use_bias=bool(config.get("use_bias", False)),
        use_cache=False,
        scale_qk_coeff=1.0,  # ERNIEKit's non-flash attention reads it (its config class sets none)
    )
    if moe:
        out.update(
            moe_k=int(config.get("moe_k", 6)),
            moe_num_shared_experts=int(config.get("moe_num_shared_experts", 2)),
            moe_layer_start_index=int(config.get("moe_layer_start_index", 1)),
            moe_layer_interval=int(config.get("moe_layer_interval", 1)),
            moe_gate_act="softmax",
            moe_norm_gate_logits=True,
            moe_use_aux_free=True,  # transformers always routes with e_score_correction_bias
        )
    out.pop("moe_norm_min", None)
    out.pop("output_router_logits", None)
    if dtype:
        out["dtype"] = dtype
    return out


# ---------------------------------------------------------------------------------------------
# reading source tensors: plain reads into fresh arrays, one tensor at a time


class Source:
    """The tensors of a checkpoint directory, by name, read on demand (headers parsed once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        tensors, problems = load_tensors(path)
        if problems:
            raise UserError(f"{path}: unreadable weights: {'; '.join(problems)}", hint="check the checkpoint")
        self.tensors: dict[str, Tensor] = tensors
        self._offsets: dict[str, int] = {}
        for shard in sorted({t.shard for t in tensors.values()}):
            file = path / shard
            header = read_safetensors_header(file)
            with file.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
            for name, info in header.items():
                if name != "__metadata__" and name in tensors and tensors[name].shard == shard:
                    self._offsets[name] = 8 + length + int(info["data_offsets"][0])
        self._cached: tuple[str, np.ndarray] | None = None

    def read(self, name: str) -> np.ndarray:
        """The tensor as an array of its width (see _MOVE); the last one read is kept, so that the
        pieces of a fused tensor cost one read."""
        if self._cached is not None and self._cached[0] == name:
            return self._cached[1]
        self._cached = None  # let the previous one go before reading the next
        tensor = self.tensors[name]
        width = DTYPES[tensor.dtype][1]
        array = np.empty(tensor.shape, dtype=_MOVE[width])
        with (self.path / tensor.shard).open("rb", buffering=0) as f:
            f.seek(self._offsets[name])
            view = memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            got = 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    raise HeaderError(f"{tensor.shard}: {name} ends early")
                got += n
        self._cached = (name, array)
        return array


def _build(item: Planned, source: Source) -> np.ndarray:
    if not item.pieces:
        return np.zeros(item.shape, dtype=_real_dtype(item.dtype))
    parts = []
    for piece in item.pieces:
        array = source.read(piece.source)
        if piece.hi is not None or piece.lo:
            array = array[..., piece.lo : piece.hi]
        if piece.transpose:
            array = array.T
        parts.append(array)
    out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    src_dtype = source.tensors[item.pieces[0].source].dtype
    if src_dtype != item.dtype:  # the float32 router of a bf16 / fp16 checkpoint
        out = out.view(_real_dtype(src_dtype)).astype(_real_dtype(item.dtype))
    out = np.ascontiguousarray(out)
    if tuple(out.shape) != item.shape:
        raise AssertionError(f"{item.name}: built {list(out.shape)}, planned {list(item.shape)}")
    return out


# ---------------------------------------------------------------------------------------------
# writing shards


def shard_plan(plan: list[Planned], max_bytes: int) -> list[list[Planned]]:
    shards: list[list[Planned]] = [[]]
    size = 0
    for item in plan:
        if shards[-1] and size + item.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def _header(items: list[Planned], fmt: str) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": fmt}}
    offset = 0
    for item in items:
        header[item.name] = {
            "dtype": item.dtype,
            "shape": list(item.shape),
            "data_offsets": [offset, offset + item.nbytes],
        }
        offset += item.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % ALIGN)
    return struct.pack("<Q", len(raw)) + raw


def write_weights(
    plan: list[Planned],
    source: Source,
    dest: Path,
    max_bytes: int,
    fmt: str,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Write the planned tensors as safetensors shards into `dest`; the file names written."""
    shards = shard_plan(plan, max_bytes)
    n = len(shards)
    names = [SAFE_WEIGHTS] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map: dict[str, str] = {}
    for i, (items, name) in enumerate(zip(shards, names, strict=True)):
        if progress:
            size = sum(t.nbytes for t in items)
            progress(f"writing {name} ({i + 1}/{n}: {len(items)} tensors, {size / 2**20:.0f} MiB)")
        with (dest / name).open("wb") as f:
            f.write(_header(items, fmt))
            for item in items:
                array = _build(item, source)
                f.write(memoryview(array.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
                del array
                weight_map[item.name] = name
    if n > 1:
        total = sum(t.nbytes for t in plan)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dest / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return names


# ---------------------------------------------------------------------------------------------
# the whole conversion


@dataclass
class Converted:
    path: Path
    source: Path
    layout: str  # what was written: hf | paddle
    architecture: str
    tensors: int
    shards: int
    bytes: int
    notes: list[str] = field(default_factory=list)


def _total(plan: list[Planned]) -> int:
    return sum(t.nbytes for t in plan)


SPACE_MARGIN = 64 * 2**20  # configs, tokenizer, headers


def _require_space(directory: Path, needed: int) -> None:
    """Refuse before writing anything when the filesystem cannot hold the export."""
    free = shutil.disk_usage(directory).free
    if free < needed + SPACE_MARGIN:
        raise UserError(
            f"{directory} has {free / 2**30:.1f} GiB free; the export needs {needed / 2**30:.1f} GiB",
            hint="free some space or write elsewhere with --out",
        )


def plan_to_hf(source: Source, config: dict[str, Any]) -> tuple[list[Planned], list[str]]:
    dims = Dims.of(config)
    plan: list[Planned] = []
    unknown: list[str] = []
    for name, tensor in source.tensors.items():
        if name == "lm_head.weight" and dims.tied:
            continue  # ERNIEKit stores the tied head; transformers ties it to the embedding on load
        try:
            outputs = paddle_to_hf(name, tuple(tensor.shape), dims)
        except UnknownTensor as err:
            unknown.append(str(err))
            continue
        for out, shape, piece in outputs:
            dtype = "F32" if FP32_NAMES.search(out) else tensor.dtype
            plan.append(Planned(out, dtype, shape, (piece,)))
    if unknown:
        raise UserError(
            f"{len(unknown)} tensor(s) have no transformers name: {', '.join(unknown[:5])}",
            hint="only ERNIE 4.5 text checkpoints in ERNIEKit's layout are converted",
        )
    notes: list[str] = []
    if is_moe(config):
        names = {p.name for p in plan}
        for layer in sorted(
            {n.rsplit(".mlp.gate.weight", 1)[0] for n in names if n.endswith(".mlp.gate.weight")}
        ):
            bias = f"{layer}.mlp.moe_statics.e_score_correction_bias"
            if bias not in names:
                plan.append(Planned(bias, "F32", (1, int(config["moe_num_experts"]))))
                if not notes:
                    notes.append("no e_score_correction_bias in the checkpoint: zeros written (same routing)")
    return plan, notes


def plan_to_paddle(source: Source, config: dict[str, Any]) -> list[Planned]:
    try:
        plan = hf_to_paddle({n: tuple(t.shape) for n, t in source.tensors.items()}, Dims.of(config))
    except UnknownTensor as err:
        raise UserError(
            f"tensor {err} has no ERNIEKit name", hint="only ERNIE 4.5 text checkpoints are converted"
        ) from None
    if Dims.of(config).tied and "lm_head.weight" not in {p.name for p in plan}:
        # transformers leaves the tied head out; ERNIEKit's checkpoints store it (its loader would
        # otherwise report it as newly initialised), [vocab, hidden] like the embedding
        embed = HF_PREFIX + "embed_tokens.weight"
        shape = tuple(source.tensors[embed].shape)
        plan.append(Planned("lm_head.weight", "", shape, (Piece(embed),)))
    for item in plan:
        item.dtype = source.tensors[item.pieces[0].source].dtype
    return plan


def convert(
    src: Path | str,
    out: Path | str,
    to: str = HF,
    *,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    card: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Converted:
    """Convert the checkpoint directory `src` to layout `to` in `out` (complete or not at all)."""
    src, out = Path(src).resolve(), Path(out).absolute()
    if to not in LAYOUTS:
        raise UserError(f"unknown layout {to!r}", hint=f"one of {', '.join(LAYOUTS)}")
    if not (src / CONFIG).is_file():
        raise UserError(f"{src} has no {CONFIG}", hint="give a checkpoint directory")
    source = Source(src)
    have = detect_layout(source.tensors)
    want_from = PADDLE if to == HF else HF
    if have != want_from:
        what = {PADDLE: "ERNIEKit (Paddle)", HF: "transformers"}.get(have or "", "an unknown")
        raise UserError(
            f"{src} holds {what} tensor names; converting to {to} needs a {want_from} checkpoint",
            hint="it already is in that layout" if have == to else "check the directory",
        )
    if out == src or src in out.parents or out in src.parents:
        raise UserError(f"{out} is, contains or is inside the source checkpoint", hint="write elsewhere")
    if out.exists() or out.is_symlink():
        if not force:
            raise UserError(f"{out} already exists", hint="pass --force to replace it, or choose --out")
        if not out.is_dir() or out.is_symlink() or not (out / CONFIG).is_file():
            # --force replaces an earlier export, never some other directory or file
            raise UserError(
                f"{out} exists and is not a checkpoint directory (no {CONFIG}); --force does not replace it",
                hint="choose another --out",
            )
    config = json.loads((src / CONFIG).read_text(encoding="utf-8"))
    dtype = weights_dtype(source.tensors)
    if to == HF:
        new_config = hf_config(config, dtype)
        plan, notes = plan_to_hf(source, config)
        fmt = "pt"
    else:
        new_config = paddle_config(config)
        plan, notes = plan_to_paddle(source, config), []
        fmt = "paddle"
    out.parent.mkdir(parents=True, exist_ok=True)
    _require_space(out.parent, _total(plan))
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # same filesystem
    try:
        names = write_weights(plan, source, staging, max_shard_bytes, fmt, progress)
        _write_json(staging / CONFIG, new_config)
        _tokenizer(src, staging, to)
        _generation_config(src, staging, new_config)
        result = Converted(
            out,
            src,
            to,
            new_config["architectures"][0],
            len(plan),
            len(names),
            sum(t.nbytes for t in plan),
            notes,
        )
        if to == HF:
            (staging / MODEL_CARD).write_text(model_card(new_config, result, card or {}), encoding="utf-8")
        _readable(staging)
        if out.exists():
            out.rename(staging / ".previous")
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s", out)
    return result


# ---------------------------------------------------------------------------------------------
# the small files


def _tokenizer(src: Path, dest: Path, to: str) -> None:
    for name in ("tokenizer.model", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja"):
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    if to == HF and (src / "tokenizer.json").is_file():
        shutil.copyfile(src / "tokenizer.json", dest / "tokenizer.json")
    file = src / "tokenizer_config.json"
    if not file.is_file():
        return
    config = json.loads(file.read_text(encoding="utf-8"))
    if to == HF:
        # ERNIE 4.5's tokenizer is a sentencepiece model used as is: transformers reads it as a Llama
        # tokenizer (its ernie4_5 mapping) when told not to add BOS / EOS or a prefix space the model
        # does not have; no remote code
        config.pop("auto_map", None)
        config.update(
            tokenizer_class="LlamaTokenizer",
            add_bos_token=bool(config.get("add_bos_token", False)),
            add_eos_token=bool(config.get("add_eos_token", False)),
            legacy=True,
            add_prefix_space=_dummy_prefix(src / "tokenizer.model"),
        )
    else:
        config["tokenizer_class"] = "Ernie4_5_Tokenizer"
        for key in ("legacy", "add_prefix_space", "auto_map"):
            config.pop(key, None)
    _write_json(dest / "tokenizer_config.json", config)


def _dummy_prefix(model: Path) -> bool:
    """Whether the sentencepiece model prepends a space to the text (add_dummy_prefix)."""
    if not model.is_file():
        return False
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=str(model)).encode("a", out_type=str)
    return bool(pieces) and pieces[0].startswith("\u2581")


def _generation_config(src: Path, dest: Path, config: dict[str, Any]) -> None:
    if (src / GENERATION_CONFIG).is_file():
        shutil.copyfile(src / GENERATION_CONFIG, dest / GENERATION_CONFIG)
        return
    ids = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    _write_json(dest / GENERATION_CONFIG, {**GENERATION_DEFAULTS, **ids})


def model_card(config: dict[str, Any], result: Converted, card: dict[str, Any]) -> str:
    """A short README.md for the export: what it is and how to load it. Names only, no paths."""
    moe = config["model_type"] == "ernie4_5_moe"
    params = (
        result.bytes
        / DTYPES.get(
            {"bfloat16": "BF16", "float16": "F16"}.get(config.get("torch_dtype", ""), "F32"), ("", 4)
        )[1]
    )
    base = card.get("base_model")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- ERNIE4.5",
        "- ernie-ops",
        *([f"base_model: {base}"] if base else []),
        "---",
        "",
        f"# {card.get('name') or 'ERNIE 4.5 fine-tune'}",
        "",
        f"An ERNIE 4.5 {'MoE ' if moe else ''}text model in the transformers layout "
        f"(`{config['architectures'][0]}`, model_type `{config['model_type']}`), converted by "
        f"ernie-ops from the PaddlePaddle (ERNIEKit) checkpoint"
        + (f" of training run `{card['run']}`" if card.get("run") else "")
        + ".",
        "",
        f"- {config['num_hidden_layers']} layers, hidden size {config['hidden_size']}, "
        f"{config['num_attention_heads']} attention heads ({config['num_key_value_heads']} KV heads), "
        f"vocabulary {config['vocab_size']}",
    ]
    if moe:
        lines.append(
            f"- {config['moe_num_experts']} experts, top-{config['moe_k']}, "
            f"{config['moe_num_shared_experts']} shared; MoE layers from {config['moe_layer_start_index']}"
        )
    lines += [
        f"- about {params / 1e6:,.0f}M parameters, {config.get('torch_dtype', 'float32')}, "
        f"{result.shards} safetensors file(s)",
        *(f"- {note}" for note in result.notes),
        *(f"- {line}" for line in card.get("lines", [])),
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        'model = AutoModelForCausalLM.from_pretrained("PATH", torch_dtype="auto")',
        'messages = [{"role": "user", "content": "Hello"}]',
        'ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")',
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:]))",
        "```",
        "",
        "vLLM serves it as is: `vllm serve PATH`. `PATH` is this directory or its hub repository.",
        "",
    ]
    return "\n".join(lines)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _readable(directory: Path) -> None:
    # mkdtemp makes the directory 0700: give it, and the files, the modes the umask says
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for file in directory.iterdir():
        if file.is_file():
            file.chmod(0o666 & ~umask)


def parse_size(text: str) -> int:
    """`5GB`, `500MB`, `2GiB`, `1000000` -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 5GB, 500MB, 2GiB)")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    scale.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})
    return int(float(m.group(1)) * scale[unit])


__all__ = [
    "HF",
    "HF_ARCHITECTURES",
    "LAYOUTS",
    "PADDLE",
    "Converted",
    "Dims",
    "checkpoint_layout",
    "convert",
    "detect_layout",
    "hf_config",
    "paddle_config",
    "paddle_to_hf",
    "parse_size",
]
