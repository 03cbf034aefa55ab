"""`ernie-ops data split`: a deterministic train/eval split (ERNIEKit wants both).

An eval record must not be trained on: the eval set is drawn from first copies only, and every
later exact copy of an eval record is left out of train (counted, never silently)."""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ernie_ops.data.read import is_json_array, read_chunks
from ernie_ops.errors import UserError
from ernie_ops.files import atomic_output, check_output


@dataclass
class SplitResult:
    train: Path
    eval: Path
    n_train: int
    n_eval: int
    left_out: int  # exact copies of eval records, written to neither file


def split_paths(source: Path, out_dir: Path | None) -> tuple[Path, Path]:
    stem = source.name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".json")
    folder = out_dir or source.parent
    return folder / f"{stem}-train.jsonl", folder / f"{stem}-eval.jsonl"


def _records(source: Path) -> Iterator[bytes]:
    """Each non-blank line's bytes, without its line end (ERNIEKit skips blank lines too)."""
    for chunk in read_chunks(source):
        for raw in chunk.lines:
            raw = raw.rstrip(b"\r")
            if raw and not raw.isspace():
                yield raw


def split(source: Path, eval_fraction: float, seed: int = 0, out_dir: Path | None = None) -> SplitResult:
    """round(d x fraction) of the d distinct records go to eval, chosen by `seed`; the rest go to
    train but for copies of eval records; order is kept in both. Two passes over SOURCE: the first
    keeps a 64-bit hash per record (8 bytes), the second compares bytes where hashes repeat."""
    import numpy as np

    if not 0 < eval_fraction < 1:
        raise UserError(f"--eval-fraction must be between 0 and 1, not {eval_fraction}")
    if is_json_array(source):
        raise UserError(f"{source} is a JSON array", hint="convert it to JSONL first: ernie-ops data convert")
    train_path, eval_path = split_paths(source, out_dir)
    for path in (train_path, eval_path):  # refused before the long read, not after it
        check_output(path, [source])
    hashes = array("q", map(hash, _records(source)))
    n = len(hashes)
    values, firsts, counts = np.unique(np.frombuffer(hashes, dtype=np.int64), True, False, True)
    firsts.sort()  # the index of each distinct record's first copy, in file order
    k = round(firsts.size * eval_fraction)
    if firsts.size < 2 or k == 0 or k == firsts.size:
        raise UserError(
            f"{firsts.size} distinct record(s) cannot be split {1 - eval_fraction:.0%}/{eval_fraction:.0%}",
            hint="more data",
        )
    chosen = set(firsts[random.Random(seed).sample(range(firsts.size), k)].tolist())
    repeated = set(values[counts > 1].tolist())  # usually empty
    del values, firsts, counts
    eval_copies: set[bytes] = set()  # eval records whose hash repeats: their later copies stay out
    n_eval = left_out = 0
    index = -1
    with atomic_output(train_path, [source]) as train, atomic_output(eval_path, [source]) as ev:
        for index, raw in enumerate(_records(source)):
            if index >= n or hash(raw) != hashes[index]:
                raise UserError(f"{source} changed while it was being split", hint="split it again")
            if index in chosen:
                ev.write(raw + b"\n")
                n_eval += 1
                if hashes[index] in repeated:
                    eval_copies.add(raw)
            elif hashes[index] in repeated and raw in eval_copies:
                left_out += 1
            else:
                train.write(raw + b"\n")
        if index + 1 != n:
            raise UserError(f"{source} changed while it was being split", hint="split it again")
    return SplitResult(train_path, eval_path, n - n_eval - left_out, n_eval, left_out)
