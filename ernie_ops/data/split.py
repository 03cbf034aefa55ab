"""`ernie-ops data split`: a deterministic train/eval split (ERNIEKit wants both)."""

from __future__ import annotations

import random
from pathlib import Path

from ernie_ops.data.read import open_binary
from ernie_ops.errors import UserError
from ernie_ops.files import atomic_output


def split_paths(source: Path, out_dir: Path | None) -> tuple[Path, Path]:
    stem = source.name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".json")
    folder = out_dir or source.parent
    return folder / f"{stem}-train.jsonl", folder / f"{stem}-eval.jsonl"


def split(
    source: Path, eval_fraction: float, seed: int = 0, out_dir: Path | None = None
) -> tuple[Path, Path, int, int]:
    """Exactly round(n x fraction) records go to eval, chosen by `seed`; order is kept in both."""
    if not 0 < eval_fraction < 1:
        raise UserError(f"--eval-fraction must be between 0 and 1, not {eval_fraction}")
    with open_binary(source) as f:
        if f.read(1) == b"[":
            raise UserError(
                f"{source} is a JSON array", hint="convert it to JSONL first: ernie-ops data convert"
            )
    with open_binary(source) as f:
        n = sum(1 for raw in f if raw.strip())
    k = round(n * eval_fraction)
    if n < 2 or k == 0 or k == n:
        raise UserError(
            f"{n} record(s) cannot be split {1 - eval_fraction:.0%}/{eval_fraction:.0%}", hint="more data"
        )
    chosen = set(random.Random(seed).sample(range(n), k))
    train_path, eval_path = split_paths(source, out_dir)
    with atomic_output(train_path) as train, atomic_output(eval_path) as ev, open_binary(source) as f:
        index = 0
        for raw in f:
            if not raw.strip():
                continue
            (ev if index in chosen else train).write(raw.rstrip(b"\r\n") + b"\n")
            index += 1
    return train_path, eval_path, n - k, k
