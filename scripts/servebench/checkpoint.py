"""The random ERNIE-4.5-0.3B-shaped checkpoint, its prompts and its GGUF exports."""

from __future__ import annotations

import json
import random
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_MODEL_DIR = Path(tempfile.gettempdir()) / "ernie-ops-bench" / "ernie45-0.3b-random"
SEED = 0
PROMPT_LEN = 64
NEW_TOKENS = 32
BATCH = 8
CLIENTS = 16
SERVED_NAME = "ernie45-0.3b-random"
# ERNIE-4.5-0.3B's shapes (its public config.json)
SHAPE: dict[str, Any] = dict(
    vocab_size=103424,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=18,
    num_attention_heads=16,
    num_key_value_heads=2,
    head_dim=128,
    max_position_embeddings=131072,
    rope_theta=500000.0,
)


# ---------------------------------------------------------------------------------------------
# the checkpoint


def build_model(out: Path) -> Path:
    """The random 0.3B-shaped checkpoint at `out`, built once (tiny_model.json records the shape)."""
    from ernie_ops.tiny_model import TinySpec, build_tiny_model

    spec = TinySpec(**SHAPE)
    marker = out / "tiny_model.json"
    if marker.is_file() and all(json.loads(marker.read_text()).get(k) == v for k, v in SHAPE.items()):
        print(f"model: cached at {out}")
        return out
    print(f"model: building the 0.3B-shaped random checkpoint at {out} (once)", flush=True)
    started = time.perf_counter()
    build_tiny_model(out, seed=SEED, force=True, spec=spec)
    print(f"model: built in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def weight_bytes(model_dir: Path) -> int:
    """Weight bytes one decode step reads: every tensor, the embedding table counted once.

    The embedding lookup reads one row; the LM head (tied: the same table) reads it all. ERNIEKit's
    save_pretrained writes `lm_head.weight` beside `embed_tokens.weight` even when tied, so the
    table is left out when a separate LM head is stored.
    """
    sizes: dict[str, int] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with file.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                sizes[name] = info["data_offsets"][1] - info["data_offsets"][0]
    if any(k.endswith("lm_head.weight") for k in sizes):
        sizes = {k: v for k, v in sizes.items() if not k.endswith("embed_tokens.weight")}
    return sum(sizes.values())


# ---------------------------------------------------------------------------------------------
# small helpers


def part_settings(part: str, new_tokens: int, model_dir: Path, **more: Any) -> dict[str, Any]:
    """The settings a part's report records: the part, MORE, and the shape of every request."""
    shape = {"prompt_tokens": PROMPT_LEN, "new_tokens": new_tokens, "batch": BATCH}
    return {"part": part, **more, **shape, "model_dir": str(model_dir)}


def prompts(n: int, length: int, seed: int) -> list[list[int]]:
    """Fixed token-id prompts from the tokenizer's real pieces (ids 3..999)."""
    rng = random.Random(seed)
    return [[rng.randrange(3, 1000) for _ in range(length)] for _ in range(n)]


def gguf_file(model_dir: Path, quant: str) -> Path:
    """The checkpoint's GGUF export in QUANT beside it (`ernie-ops export DIR --format gguf`), made once."""
    from ernie_ops.train.gguf_format import convert, default_name

    path = model_dir.parent / default_name(model_dir, quant)
    if not path.is_file():
        print(f"gguf: exporting {path.name} (once)", flush=True)
        convert(model_dir, path, quant)
    return path


def prompt_texts(model_dir: Path, n: int) -> list[str]:
    """PROMPT_LEN-token prompts as text (both servers take text): the checkpoint tokenizer's decoding
    of `prompts`, so each server tokenizes it back to about PROMPT_LEN tokens."""
    from ernie.tokenizer import Ernie4_5_Tokenizer

    tokenizer = Ernie4_5_Tokenizer.from_pretrained(str(model_dir))
    return [tokenizer.decode(p) for p in prompts(n, PROMPT_LEN, SEED)]
