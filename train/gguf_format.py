"""GGUF, llama.cpp's file format, from an ERNIE 4.5 checkpoint (ERNIEKit's Paddle layout or the
transformers one): `ernie-ops export RUN --format gguf --quant f32|f16|q8_0|q4_0`.

What llama.cpp expects of an `ernie4_5` file (its `src/llama-arch.cpp`, `src/llama-model.cpp` and its
converter `convert_hf_to_gguf.py` / `conversion/ernie.py`; the names come from the `gguf` package's
own tables, `gguf.get_tensor_name_map`):

- tensors with transformers' names mapped to GGUF's (`model.layers.N.self_attn.q_proj.weight` ->
  `blk.N.attn_q.weight`, `model.embed_tokens.weight` -> `token_embd.weight`, ...): the fused Paddle
  tensors are split and transposed by the transformers conversion's own table (`hf_format.py`). A
  tied head is left out; llama.cpp then uses `token_embd` for the output. A transformers [out, in]
  matrix is already what GGUF stores (its ne0 is the row length).
- hyperparameters under `ernie4_5.` (context_length, embedding_length, feed_forward_length,
  block_count, attention.head_count / head_count_kv / key_length / value_length /
  layer_norm_rms_eps, rope.freq_base) and `general.file_type`.
- the tokenizer as llama.cpp's `llama` (sentencepiece) model: every piece with its score and type
  (sentencepiece's piece types are GGUF's token types, number for number), add_space_prefix as the
  model's normalizer says, BOS / EOS / UNK / PAD ids, the end-of-turn token (`<|end_of_sentence|>`,
  where ERNIE 4.5's chat template ends an answer) and the chat template.

Quantization (the `gguf` package's own quantizers): f32 and f16 keep every 1-D tensor (norms) in
float32, as llama.cpp's converter does. q8_0 and q4_0 quantize the matrices in blocks of 32 along a
row; a matrix whose rows do not divide into blocks falls back to f16 (said in the notes). q4_0
keeps the output matrix (the embedding, when tied) in q8_0: llama.cpp's own `llama-quantize` gives it
a higher-precision type too (q6_k, which the `gguf` package cannot write). K-quants (q4_k_m) are
refused: the `gguf` package has no quantizer for them; `llama-quantize` makes one from the f16 file.

The conversion streams: the tensor table and every size are known before the first byte, then each
tensor is read, converted and written a slice of rows at a time into a staging file beside the
target, renamed into place when complete.

MoE checkpoints become llama.cpp's `ernie4_5-moe`: each layer's experts are stacked into one
[n_expert, out, in] tensor (`ffn_gate_exps` / `ffn_up_exps` / `ffn_down_exps`, written expert after
expert), the router `ffn_gate_inp` stays float32, the correction bias is `exp_probs_b.bias`
([n_expert]), the shared experts `ffn_*_shexp`; expert_count, expert_used_count,
leading_dense_block_count (moe_layer_start_index), interleave_moe_layer_step and the expert sizes
go in the metadata. llama.cpp's loader wants every layer from the first MoE one on to be MoE:
checkpoints with moe_layer_interval != 1 or an earlier moe_layer_end_index are refused. MTP heads
are left out (as llama.cpp's converter does).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ernie_ops.errors import UserError
from ernie_ops.train.hf_format import (
    HF,
    HF_PREFIX,
    PADDLE,
    Piece,
    Planned,
    Source,
    _build,
    _dummy_prefix,
    _real_dtype,
    _refuse_unsupported,
    _require_space,
    detect_layout,
    plan_to_hf,
)
from ernie_ops.train.verify import CONFIG, is_moe

log = logging.getLogger(__name__)

ARCH = "ernie4_5"
MOE_ARCH = "ernie4_5-moe"
QUANTS = ("f32", "f16", "q8_0", "q4_0")
REFUSED = {
    "q4_k_m": "the gguf package has no Q4_K quantizer (it reads K-quants, it cannot write them); export "
    "--quant f16 and run llama.cpp's `llama-quantize model-f16.gguf model-q4_k_m.gguf Q4_K_M`",
}
DEFAULT_QUANT = "f16"
SUFFIX = ".gguf"
ROWS_PER_SLICE = 4096  # rows converted at once: bounds the float32 copy and the quantizer's temporaries
EOT_PIECE = "<|end_of_sentence|>"
EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise UserError(
            "--format gguf needs the `gguf` package (llama.cpp's own GGUF library)",
            hint='pip install "gguf>=0.17,<1"  (or the extra: pip install "ernie-ops[gguf]")',
        ) from None
    return gguf


def check_quant(quant: str) -> str:
    quant = quant.lower()
    if quant in REFUSED:
        raise UserError(f"--quant {quant} is not written here: {REFUSED[quant]}")
    if quant not in QUANTS:
        raise UserError(f"--quant {quant!r} is not one of {', '.join(QUANTS)}", hint="e.g. --quant q8_0")
    return quant


def _types(quant: str) -> tuple[Any, Any]:
    """(llama.cpp file type, the type of the matrices) for a --quant name."""
    g = _gguf()
    q, f = g.GGMLQuantizationType, g.LlamaFileType
    return {
        "f32": (f.ALL_F32, q.F32),
        "f16": (f.MOSTLY_F16, q.F16),
        "q8_0": (f.MOSTLY_Q8_0, q.Q8_0),
        "q4_0": (f.MOSTLY_Q4_0, q.Q4_0),
    }[quant]


# ---------------------------------------------------------------------------------------------
# the tensor table


@dataclass
class GgufTensor:
    name: str  # GGUF's name
    item: Planned  # how to build it (transformers orientation, [out, in])
    qtype: Any  # gguf.GGMLQuantizationType
    stacked: list[Planned] = field(default_factory=list)  # MoE experts: one [n_expert, out, in] tensor
    squeeze: bool = False  # the [1, experts] correction bias, which llama.cpp reads as [experts]

    @property
    def items(self) -> list[Planned]:
        return self.stacked or [self.item]

    @property
    def shape(self) -> tuple[int, ...]:
        if self.stacked:
            return (len(self.stacked), *self.item.shape)
        if self.squeeze:
            return (int(np.prod(self.item.shape)),)
        return self.item.shape

    def nbytes(self) -> int:
        g = _gguf()
        block, size = g.GGML_QUANT_SIZES[self.qtype]
        rows = int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1
        return rows * (self.shape[-1] // block) * size


def _hf_plan(source: Source, config: dict[str, Any]) -> list[Planned]:
    """The tensors in transformers' names and orientation, whatever the source's layout."""
    layout = detect_layout(source.tensors)
    if layout == PADDLE:
        plan, _ = plan_to_hf(source, config)
        return plan
    if layout == HF:
        tied = bool(config.get("tie_word_embeddings", False))
        return [
            Planned(name, t.dtype, tuple(t.shape), (Piece(name),))
            for name, t in source.tensors.items()
            if not (tied and name == "lm_head.weight")
        ]
    raise UserError(
        f"{source.path} holds neither ERNIEKit (ernie.*) nor transformers (model.*) tensor names",
        hint="give an ERNIE 4.5 checkpoint directory or a finished run",
    )


def plan(source: Source, config: dict[str, Any], quant: str) -> tuple[list[GgufTensor], list[str]]:
    """Every GGUF tensor, in file order, with its type; and notes for the user."""
    g = _gguf()
    _, matrix_type = _types(quant)
    layers = int(config["num_hidden_layers"])
    moe = is_moe(config)
    names = g.get_tensor_name_map(g.MODEL_ARCH.ERNIE4_5_MOE if moe else g.MODEL_ARCH.ERNIE4_5, layers)
    tied = bool(config.get("tie_word_embeddings", False))
    out: list[GgufTensor] = []
    unknown: list[str] = []
    fallback: list[str] = []
    experts: dict[str, GgufTensor] = {}
    for item in _hf_plan(source, config):
        if ".mtp_" in item.name or item.name.startswith(HF_PREFIX + "mtp"):
            continue  # multi-token prediction heads: llama.cpp's converter leaves them out too
        expert = EXPERT.match(item.name)
        squeeze = item.name.endswith(".e_score_correction_bias")
        if expert:  # model.layers.L.mlp.experts.E.gate_proj.weight -> blk.L.ffn_gate_exps.weight
            key = f"{expert.group(1)}.experts.{expert.group(3)}"
            base = names.get_name(key)
            name = None if base is None else base + ".weight"
            if name is not None and name in experts:
                experts[name].stacked.append(item)
                continue
        elif squeeze:  # llama.cpp's name is exp_probs_b.bias
            name = names.get_name(item.name[: -len("_bias")] + ".bias", try_suffixes=(".bias",))
        else:
            name = names.get_name(item.name, try_suffixes=(".weight", ".bias"))
        if name is None:
            unknown.append(item.name)
            continue
        qtype = g.GGMLQuantizationType.F32
        router = item.name.endswith(".mlp.gate.weight")  # kept float32, as llama.cpp's converter does
        if len(item.shape) == 2 and not router and not squeeze:
            qtype = matrix_type
            is_output = name == "output.weight" or (tied and name == "token_embd.weight")
            if quant == "q4_0" and is_output:
                qtype = g.GGMLQuantizationType.Q8_0
            block = g.GGML_QUANT_SIZES[qtype][0]
            if item.shape[-1] % block:
                fallback.append(name)
                qtype = g.GGMLQuantizationType.F16
        tensor = GgufTensor(name, item, qtype, squeeze=squeeze)
        if expert:
            tensor.stacked.append(item)
            experts[name] = tensor
        out.append(tensor)
    for tensor in experts.values():
        count = int(config["moe_num_experts"])
        if len(tensor.stacked) != count:
            raise UserError(
                f"{tensor.name}: {len(tensor.stacked)} experts in the checkpoint, config says {count}"
            )
        order = [int(EXPERT.match(i.name).group(2)) for i in tensor.stacked]  # type: ignore[union-attr]
        tensor.stacked = [i for _, i in sorted(zip(order, tensor.stacked, strict=True))]
    if unknown:
        raise UserError(
            f"{len(unknown)} tensor(s) have no GGUF name for {ARCH}: {', '.join(unknown[:5])}",
            hint="only ERNIE 4.5 text checkpoints are converted to GGUF",
        )
    notes = []
    if fallback:
        notes.append(
            f"{len(fallback)} matrix(es) with rows not divisible into blocks kept in f16: {fallback[:3]}"
        )
    if quant == "q4_0":
        notes.append("the output matrix (the tied embedding) is q8_0, as llama-quantize keeps it above q4_0")
    return out, notes


def _refuse(config: dict[str, Any]) -> None:
    _refuse_unsupported(config)  # VL, position compression, LayerNorm: no llama.cpp equivalent either
    if is_moe(config):
        layers = int(config["num_hidden_layers"])
        end = int(config.get("moe_layer_end_index", -1))
        if int(config.get("moe_layer_interval", 1)) != 1 or end not in (-1, layers - 1):
            raise UserError(
                "MoE layers interleaved with dense ones (moe_layer_interval != 1) or ending before the "
                "last layer: llama.cpp's ernie4_5-moe loader wants every layer from the first MoE one on "
                "to be MoE",
                hint="serve this model with the embedded engine or vLLM",
            )
    if config.get("use_bias"):
        raise UserError(
            "use_bias true: attention / MLP biases are not exported to GGUF (unverified in llama.cpp)",
            hint="export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py",
        )


# ---------------------------------------------------------------------------------------------
# metadata and tokenizer


def _tokenizer(writer: Any, src: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The `llama` (sentencepiece) tokenizer, its special ids and chat template; returns a summary."""
    g = _gguf()
    model_file = src / "tokenizer.model"
    if not model_file.is_file():
        raise UserError(
            f"{src} has no tokenizer.model: a GGUF file carries its tokenizer",
            hint="copy the base model's tokenizer files into the checkpoint directory",
        )
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(model_file.read_bytes())
    vocab = int(config["vocab_size"])
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for piece in proto.pieces[:vocab]:
        tokens.append(piece.piece.encode("utf-8"))
        scores.append(float(piece.score))
        types.append(int(piece.type))  # sentencepiece's NORMAL..BYTE are GGUF's TokenType 1..6
    for i in range(len(tokens), vocab):  # a model vocabulary larger than the tokenizer's
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(int(g.TokenType.UNUSED))
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(_dummy_prefix(model_file))

    tok_config: dict[str, Any] = {}
    if (src / "tokenizer_config.json").is_file():
        tok_config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    special: dict[str, Any] = {}
    if (src / "special_tokens_map.json").is_file():
        special = json.loads((src / "special_tokens_map.json").read_text(encoding="utf-8"))
    index = {t.decode("utf-8", "replace"): i for i, t in enumerate(tokens)}

    def token_id(kind: str, fallback: Any = None) -> int | None:
        value = tok_config.get(f"{kind}_token") or special.get(f"{kind}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value in index:
            return index[value]
        return fallback if isinstance(fallback, int) and 0 <= fallback < vocab else None

    ids = {
        "bos": token_id("bos", config.get("bos_token_id")),
        "eos": token_id("eos", config.get("eos_token_id")),
        "unk": token_id("unk"),
        "pad": token_id("pad", config.get("pad_token_id")),
        "sep": token_id("sep"),
        "eot": index.get(EOT_PIECE),
    }
    adders = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
        "sep": writer.add_sep_token_id,
        "eot": writer.add_eot_token_id,
    }
    for kind, value in ids.items():
        if value is not None:
            adders[kind](value)
    writer.add_add_bos_token(bool(tok_config.get("add_bos_token", False)))
    writer.add_add_eos_token(bool(tok_config.get("add_eos_token", False)))
    template = chat_template(src, tok_config)
    if template:
        writer.add_chat_template(template)
    return {
        "tokens": vocab,
        "special": {k: v for k, v in ids.items() if v is not None},
        "chat_template": bool(template),
    }


def chat_template(src: Path, tok_config: dict[str, Any]) -> str | None:
    if (src / "chat_template.jinja").is_file():
        return (src / "chat_template.jinja").read_text(encoding="utf-8")
    value = tok_config.get("chat_template")
    if isinstance(value, list):  # named templates: the default one
        value = next((t.get("template") for t in value if t.get("name") == "default"), None)
    return value if isinstance(value, str) and value else None


def _hyperparameters(writer: Any, config: dict[str, Any], name: str, file_type: Any) -> None:
    g = _gguf()
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    writer.add_type(g.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(int(config.get("max_position_embeddings", 32768)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))  # ERNIEKit's default
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))
    if is_moe(config):
        experts = int(config["moe_num_experts"])
        shared = int(config.get("moe_num_shared_experts") or 0)
        writer.add_expert_count(experts)
        writer.add_expert_used_count(int(config.get("moe_k", 2)))
        writer.add_interleave_moe_layer_step(int(config.get("moe_layer_interval", 1)))
        writer.add_leading_dense_block_count(int(config.get("moe_layer_start_index", 0)))
        writer.add_expert_feed_forward_length(int(config["moe_intermediate_size"]))
        writer.add_expert_shared_count(shared)
        if shared:  # ERNIEKit's shared experts are one MLP of moe_intermediate_size x shared
            writer.add_expert_shared_feed_forward_length(int(config["moe_intermediate_size"]) * shared)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(g.GGML_QUANT_VERSION)


# ---------------------------------------------------------------------------------------------
# writing


@dataclass
class GgufExport:
    path: Path
    source: Path
    quant: str
    architecture: str
    tensors: int
    bytes: int
    seconds: float
    tokenizer: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _values(item: Planned, source: Source) -> np.ndarray:
    """One source item in its own dtype (bf16 / f16 / f32), [out, in]: made float32 a slice of rows
    at a time, so that a bf16 embedding never exists whole in float32."""
    array = _build(item, source)
    real = _real_dtype(item.dtype)
    return array if array.dtype == real else array.view(real)


def _write_data(fout: Any, tensor: GgufTensor, source: Source, alignment: int) -> None:
    """The tensor's data, an expert (or the whole tensor) and a slice of rows at a time: rows are
    quantized independently, so the experts of a stacked tensor are simply written one after another."""
    g = _gguf()
    fout.write(b"\0" * (-fout.tell() % alignment))
    written = 0
    for item in tensor.items:
        values = _values(item, source)
        rows = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values.reshape(1, -1)
        for start in range(0, rows.shape[0], ROWS_PER_SLICE):
            rows_f32 = np.ascontiguousarray(rows[start : start + ROWS_PER_SLICE], dtype=np.float32)
            part = g.quants.quantize(rows_f32, tensor.qtype)
            fout.write(memoryview(np.ascontiguousarray(part).reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
            written += part.nbytes
        del values, rows
    if written != tensor.nbytes():
        raise AssertionError(f"{tensor.name}: wrote {written} bytes, planned {tensor.nbytes()}")
    fout.write(b"\0" * (-written % alignment))


def default_name(src: Path, quant: str) -> str:
    return f"{src.name}-{quant}{SUFFIX}"


def convert(
    src: Path | str,
    out: Path | str,
    quant: str = DEFAULT_QUANT,
    *,
    force: bool = False,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> GgufExport:
    """Write the checkpoint directory `src` as one GGUF file `out` (complete or not at all)."""
    started = time.monotonic()
    quant = check_quant(quant)
    g = _gguf()
    src, out = Path(src).resolve(), Path(out).absolute()
    if not (src / CONFIG).is_file():
        raise UserError(f"{src} has no {CONFIG}", hint="give a checkpoint directory")
    if out.suffix != SUFFIX:
        raise UserError(f"{out}: a GGUF file's name ends in {SUFFIX}", hint=f"e.g. --out {out.name}{SUFFIX}")
    if out.exists() or out.is_symlink():
        if not force:
            raise UserError(f"{out} already exists", hint="pass --force to replace it, or choose --out")
        if not out.is_file() or out.is_symlink() or not _is_gguf(out):
            raise UserError(
                f"{out} exists and is not a GGUF file; --force does not replace it",
                hint="choose another --out",
            )
    config = json.loads((src / CONFIG).read_text(encoding="utf-8"))
    _refuse(config)
    source = Source(src)
    tensors, notes = plan(source, config, quant)
    file_type, _ = _types(quant)
    total = sum(t.nbytes() for t in tensors)
    out.parent.mkdir(parents=True, exist_ok=True)
    _require_space(out.parent, total)
    staging = out.parent / f".{out.name}.{os.getpid()}.tmp"
    arch = MOE_ARCH if is_moe(config) else ARCH
    writer = g.GGUFWriter(staging, arch)
    try:
        _hyperparameters(writer, config, name or src.name, file_type)
        summary = _tokenizer(writer, src, config)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes(), raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        fout = writer.fout[0]
        for i, t in enumerate(tensors):
            if progress and (i % 16 == 0 or t.nbytes() > 64 * 2**20):
                progress(
                    f"writing {t.name} ({i + 1}/{len(tensors)}, {t.qtype.name}, {t.nbytes() / 2**20:.1f} MiB)"
                )
            _write_data(fout, t, source, writer.data_alignment)
        fout.flush()
        os.fsync(fout.fileno())
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o666 & ~umask)
        os.replace(staging, out)
    finally:
        writer.close()
        staging.unlink(missing_ok=True)
    log.info("wrote %s", out)
    return GgufExport(
        out, src, quant, arch, len(tensors), out.stat().st_size, time.monotonic() - started, summary, notes
    )


# ---------------------------------------------------------------------------------------------
# reading back


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def is_gguf(path: Path | str) -> bool:
    path = Path(path)
    return path.is_file() and _is_gguf(path)


def read(path: Path | str) -> dict[str, Any]:
    """What a GGUF file holds: architecture, file type, hyperparameters, the tokenizer's size and
    special ids, whether it has a chat template, and every tensor's name, shape (GGUF order: the row
    length first) and type."""
    g = _gguf()
    reader = g.GGUFReader(str(path), "r")
    meta: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            meta[key] = len(fld.data)
            continue
        meta[key] = fld.contents()
    tensors = {t.name: (tuple(int(x) for x in t.shape), t.tensor_type.name) for t in reader.tensors}
    return {"metadata": meta, "tensors": tensors}


def read_metadata(path: Path | str) -> dict[str, Any]:
    """The metadata of a GGUF file (token lists as their lengths), without the tensor table."""
    return read(path)["metadata"]


def token_list(path: Path | str) -> list[str]:
    g = _gguf()
    reader = g.GGUFReader(str(path), "r")
    return list(reader.fields["tokenizer.ggml.tokens"].contents())


__all__ = [
    "ARCH",
    "QUANTS",
    "REFUSED",
    "GgufExport",
    "check_quant",
    "convert",
    "is_gguf",
    "read",
    "read_metadata",
    "token_list",
]
