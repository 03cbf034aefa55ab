"""A tiny random ERNIE 4.5 checkpoint that ERNIEKit loads and trains on a CPU in seconds.

Everything a real ERNIE 4.5 Paddle checkpoint has, at toy size: a sentencepiece tokenizer trained
here with ERNIE 4.5's special tokens and chat format, a Paddle-format `config.json`, weights built
with ERNIEKit's own model classes (so parameter names match real checkpoints: `ernie.layers.N.
self_attn.qkv_proj`, `mlp.up_gate_proj`, ...) and a `generation_config.json`. Tests and the demo
use it so that nothing needs a model hub.
"""

from __future__ import annotations

import io
import json
import logging
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ernie_ops import __version__
from ernie_ops.errors import UserError
from ernie_ops.extras import optional_imports

log = logging.getLogger(__name__)

# ERNIE 4.5's chat format, as its tokenizer_config.json renders it: the conversation opens with
# <|begin_of_sentence|>, a system prompt is followed by "\n", a user turn is "User: ...\n", an
# assistant turn "Assistant: ...<|end_of_sentence|>", and the generation prompt is "Assistant: ".
CHAT_TEMPLATE = (
    "{%- if not add_generation_prompt is defined -%}{%- set add_generation_prompt = true -%}{%- endif -%}"
    '{%- if not cls_token is defined -%}{%- set cls_token = "<|begin_of_sentence|>" -%}{%- endif -%}'
    '{%- if not sep_token is defined -%}{%- set sep_token = "<|end_of_sentence|>" -%}{%- endif -%}'
    "{{- cls_token -}}"
    "{%- for message in messages -%}"
    '{%- if message["role"] == "user" -%}{{- "User: " + message["content"] + "\\n" -}}'
    '{%- elif message["role"] == "assistant" -%}{{- "Assistant: " + message["content"] + sep_token -}}'
    '{%- elif message["role"] == "system" -%}{{- message["content"] + "\\n" -}}'
    "{%- endif -%}"
    "{%- endfor -%}"
    '{%- if add_generation_prompt -%}{{- "Assistant: " -}}{%- endif -%}'
)

# Special tokens of ERNIE 4.5's tokenizer (special_tokens_map.json of the public checkpoints);
# <unk>, <s>, </s> take ids 0, 1, 2 as there. The reasoning / tool markers are single pieces so the
# thinking and tool-call parsers can find them by id.
SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<unk>",
    "cls_token": "<|begin_of_sentence|>",
    "sep_token": "<|end_of_sentence|>",
    "mask_token": "<mask:1>",
    "sys_start_token": "<mask:4>",
    "sys_end_token": "<mask:5>",
    "header_start_token": "<mask:6>",
    "header_end_token": "<mask:7>",
}
ADDITIONAL_SPECIAL_TOKENS = [
    "<|IMAGE_PLACEHOLDER|>",
    "<|AUDIO_PLACEHOLDER|>",
    "<|LOC_BEGIN|>",
    "<|LOC_END|>",
    "<|LOC_SEP|>",
    "<|CROP_COL_SEP|>",
    "<|CROP_ROW_SEP|>",
    "<|IMAGE_SEP|>",
    "<|IMAGE_START|>",
    "<|IMAGE_END|>",
    "<|VIDEO_START|>",
    "<|VIDEO_END|>",
]
MARKER_PIECES = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<response>", "</response>"]
USER_DEFINED_PIECES = [
    "<|begin_of_sentence|>",
    "<|end_of_sentence|>",
    *[f"<mask:{i}>" for i in range(8)],
    *ADDITIONAL_SPECIAL_TOKENS,
    *MARKER_PIECES,
    "\n",
]


@dataclass(frozen=True)
class TinySpec:
    """Toy-sized shapes that keep ERNIE 4.5's structure (GQA, head_dim set, tied embeddings)."""

    kind: str = "dense"
    vocab_size: int = 1024  # the model's; a larger one pads the tokenizer with inert pieces
    tokenizer_vocab_size: int = 1024  # pieces sentencepiece learns from the corpus
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    max_position_embeddings: int = 4096
    rope_theta: float = 500000.0
    # MoE (kind == "moe"): like ERNIE-4.5-21B-A3B, layer 0 dense, the rest MoE with shared experts
    moe_num_experts: int = 4
    moe_k: int = 2
    moe_num_shared_experts: int = 1
    moe_intermediate_size: int = 32
    moe_layer_start_index: int = 1

    @property
    def architecture(self) -> str:
        return "Ernie4_5_MoeForCausalLM" if self.kind == "moe" else "Ernie4_5_ForCausalLM"

    @property
    def model_type(self) -> str:
        return "ernie4_5_moe" if self.kind == "moe" else "ernie4_5"


KINDS = ("dense", "moe")

# Everyday English covering every letter, so small task datasets tokenize into real pieces.
COMMON_WORDS = (
    "the be to of and a in that have it for not on with he as you do at this but his by from they we "
    "say her she or an will my one all would there their what so up out if about who get which go me "
    "when make can like time no just him know take people into year your good some could them see "
    "other than then now look only come its over think also back after use two how our work first well "
    "way even new want because any these give day most us is are was were answer question user "
    "assistant reverse sort upper lower count sum list json name value true false null word words "
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu quick brown fox jumps lazy dog "
    "chart table document field box image text number date price total invoice"
).split()


def build_tiny_model(
    out: Path, kind: str = "dense", seed: int = 0, force: bool = False, spec: TinySpec | None = None
) -> Path:
    """Write a tiny random ERNIE 4.5 checkpoint to `out` (atomically) and return its path.
    `spec` gives other shapes (e.g. the real ERNIE-4.5-0.3B shape for benchmarks)."""
    if spec is not None:
        kind = spec.kind
    if kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():  # a file, a FIFO, a device: never replaced
        raise UserError(f"{out} exists and is not a directory", hint="choose a directory name")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(
            f"{out} already exists and is not empty",
            hint="choose another directory or pass --force to replace it",
        )
    spec = spec or TinySpec(kind=kind)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise UserError(
            f"cannot write to {out.parent}: {err.strerror}", hint="choose a writable directory"
        ) from err
    try:
        log.info("training the sentencepiece tokenizer (vocab %d)", spec.vocab_size)
        _write_tokenizer(staging, spec, seed)
        log.info("building the %s model with ERNIEKit's classes (seed %d)", kind, seed)
        _write_model(staging, spec, seed)
        _write_generation_config(staging)
        (staging / "tiny_model.json").write_text(
            json.dumps({"ernie_ops": __version__, "seed": seed, **asdict(spec)}, indent=2) + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %s", out)
    return out


def _corpus(seed: int, lines: int = 3000) -> list[str]:
    """Deterministic pseudo-text with the characters fine-tuning data uses (words, digits, JSON)."""
    rng = random.Random(seed)
    syllables = ["ka", "ro", "mi", "ten", "sa", "lu", "ver", "no", "di", "pa", "zor", "el", "qui", "an"]
    words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(300)})
    words += COMMON_WORDS
    out = []
    for _ in range(lines):
        n = rng.randint(3, 14)
        parts = [rng.choice(words) for _ in range(n)]
        style = rng.random()
        if style < 0.2:
            parts.append(str(rng.randint(0, 99999)))
        elif style < 0.35:
            parts = [json.dumps({rng.choice(words): rng.choice(words), "n": rng.randint(0, 999)})]
        elif style < 0.45:
            parts = [p.upper() for p in parts]
        out.append(" ".join(parts).capitalize() + rng.choice([".", "?", "!", ":", ","]))
    return out


def _write_tokenizer(out: Path, spec: TinySpec, seed: int) -> None:
    import sentencepiece as spm

    model = io.BytesIO()  # in memory: a file path would be recorded in the model and vary per run
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(seed)),
        model_writer=model,
        model_type="bpe",
        vocab_size=spec.tokenizer_vocab_size,
        character_coverage=1.0,
        byte_fallback=True,  # any UTF-8 text encodes; no example is lost to <unk>
        split_digits=True,
        normalization_rule_name="identity",  # keep text byte-exact, like ERNIE 4.5's tokenizer
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=USER_DEFINED_PIECES,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        num_threads=1,  # deterministic for a seed
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(_padded(model.getvalue(), spec.vocab_size))
    special_map = {**SPECIAL_TOKENS, "additional_special_tokens": ADDITIONAL_SPECIAL_TOKENS}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    config = {
        "tokenizer_class": "Ernie4_5_Tokenizer",
        **special_map,
        "model_max_length": spec.max_position_embeddings,
        "padding_side": "right",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _padded(model: bytes, size: int) -> bytes:
    """The tokenizer with inert pieces appended up to the model's vocabulary, so every id a random
    model can emit decodes; their scores are far below every real piece, so encoding is unchanged."""
    with optional_imports("cpu", "building the tiny model"):  # protobuf (`google`) comes with Paddle
        from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()  # type: ignore[attr-defined]  # generated protobuf: no stubs
    normal = proto.SentencePiece.NORMAL
    proto.ParseFromString(model)
    for i in range(size - len(proto.pieces)):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"\u2581w{i}", -1e6 - i, normal
    return proto.SerializeToString()


def _model_config_kwargs(spec: TinySpec) -> dict:
    kwargs = dict(
        architectures=[spec.architecture],
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        use_bias=False,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        use_cache=False,
        # CPU-safe defaults: the flash / fused kernels are GPU-only (recipes switch them on GPUs)
        use_flash_attention=False,
        fuse_rms_norm=False,
        fuse_rope=False,
        fuse_linear=False,
        fuse_swiglu=False,
        # ERNIEKit's non-flash attention reads it and Ernie4_5_MoeConfig does not set it
        scale_qk_coeff=1.0,
        dtype="float32",  # the CPU dtype: Paddle's CPU kernels lack bf16 for inference
    )
    if spec.kind == "moe":
        kwargs.update(
            moe_num_experts=spec.moe_num_experts,
            moe_k=spec.moe_k,
            moe_num_shared_experts=spec.moe_num_shared_experts,
            moe_intermediate_size=spec.moe_intermediate_size,
            moe_layer_start_index=spec.moe_layer_start_index,
            moe_layer_interval=1,
            moe_layer_end_index=spec.num_hidden_layers - 1,
            moe_capacity=[spec.moe_num_experts] * 3,  # [train, eval, predict] capacity factors
            moe_gate="top2_fused",
            moe_use_aux_free=True,
        )
    return kwargs


def _write_model(out: Path, spec: TinySpec, seed: int) -> None:
    with optional_imports("cpu", "building the tiny model"):
        import paddle
        from ernie.configuration import Ernie4_5_MoeConfig
        from ernie.modeling_moe import Ernie4_5_MoeForCausalLM
        from paddleformers.utils.log import logger as paddleformers_logger

    if not log.isEnabledFor(logging.DEBUG):
        paddleformers_logger.set_level("WARNING")

    paddle.set_device("cpu")
    paddle.seed(seed)
    # moe_group is a runtime setting (ERNIEKit sets it from the recipe); "dummy" needs no
    # initialised process group, and it is not written to config.json.
    config = Ernie4_5_MoeConfig(**_model_config_kwargs(spec), moe_group="dummy")
    model = Ernie4_5_MoeForCausalLM(config)
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    # save_pretrained writes what the config class knows; make the architecture and model type
    # those of a real ERNIE 4.5 checkpoint of this kind, which FastDeploy dispatches on.
    config_path = out / "config.json"
    saved = json.loads(config_path.read_text())
    saved.update(architectures=[spec.architecture], model_type=spec.model_type, dtype="float32")
    saved.pop("moe_group", None)
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def _write_generation_config(out: Path) -> None:
    from ernie_ops.catalog import GENERATION_DEFAULTS

    config = {**GENERATION_DEFAULTS, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    (out / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n")
