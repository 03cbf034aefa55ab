"""Prompt lengths in tokens of the served model's tokenizer.

`ernie-ops bench --input-len 256` asks for prompts of 256 tokens (the message content; the chat
template adds its own few, which the server's `usage.prompt_tokens` counts). The tokenizer is the
checkpoint's: `tokenizer.json` through the `tokenizers` library (transformers-layout checkpoints,
vLLM's), else `tokenizer.model` through SentencePiece (ERNIE 4.5's Paddle checkpoints: the model
`Ernie4_5_Tokenizer` wraps; it encodes plain text to the same ids). It is found, in this order, at
`--tokenizer DIR`, in the record of a server `ernie-ops serve` started on this machine on the
endpoint's port (the `--model` it was started with), at the directory `/v1/models` names as the
model's `root` (vLLM), and at the served model's name when that is a local directory (vLLM and
FastDeploy serve a local checkpoint under its path). Without one, lengths are counted in words
and the report says "words".

A prompt of exactly N tokens: random common words, encoded, cut to N ids, decoded, and re-encoded
(a cut can make a different tokenization); the cut moves until the text encodes to N tokens (a few
tries), and the count that was reached is what the request records.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class Tokenizer(Protocol):
    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class _HF:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer as Fast

        self.name = str(path.parent)
        self._tok = Fast.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))


class _SentencePiece:
    def __init__(self, path: Path):
        import sentencepiece

        self.name = str(path.parent)
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._sp.decode(list(ids)))


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def load(directory: Path) -> Tokenizer:
    """The checkpoint's tokenizer in `directory`."""
    from ernie_ops.errors import UserError

    directory = Path(directory).expanduser()
    if (directory / "tokenizer.json").is_file():
        return _HF(directory / "tokenizer.json")
    if (directory / "tokenizer.model").is_file():
        return _SentencePiece(directory / "tokenizer.model")
    raise UserError(
        f"--tokenizer {directory}: no tokenizer.json or tokenizer.model there",
        hint="give the served checkpoint's directory (the one passed to `ernie-ops serve`)",
    )


def candidates(model: str | None, models_body: Any, port: int | None, loopback: bool) -> list[Path]:
    """Where the served model's tokenizer may be, in order (see the module docstring)."""
    found: list[Path] = []
    if loopback and port is not None:
        found += _served_here(port)  # exact: the path the server was started with
    if isinstance(models_body, dict):
        for card in models_body.get("data") or ():
            if isinstance(card, dict) and (model is None or card.get("id") == model) and card.get("root"):
                found.append(Path(str(card["root"])).expanduser())
    if model:
        found.append(Path(model).expanduser())  # vLLM and FastDeploy serve a checkpoint under its path
    return found


def _served_here(port: int) -> list[Path]:
    """The `--model` of a server `ernie-ops serve` started on this machine on `port`."""
    try:
        from ernie_ops.serve.lifecycle import servers

        records = servers(port)
    except Exception:  # a convenience: no record, no candidate
        return []
    paths = []
    for record in records:
        command = record.get("command") or []
        if isinstance(command, str):  # a foreground server's, from its port lock
            command = command.split()
        for flag, value in itertools.pairwise(command):
            if flag == "--model":
                paths.append(Path(str(value)))
    return paths


def find(paths: list[Path]) -> Path | None:
    for path in paths:
        try:
            if path.is_dir() and has_tokenizer(path):
                return path.resolve()
        except OSError:
            continue
    return None


def prompt_of(tok: Tokenizer, n: int, words: Sequence[str], rng: random.Random) -> tuple[str, int]:
    """Text of random `words` that encodes to `n` tokens (or as near as a few tries get): (text,
    its token count)."""
    text = " ".join(rng.choices(words, k=n + 8))  # every word is at least one token
    ids = tok.encode(text)
    while len(ids) < n:  # a tokenizer that merges words: add more
        text += " " + " ".join(rng.choices(words, k=n))
        ids = tok.encode(text)
    cut, best = n, ("", -1)
    for _ in range(6):
        candidate = tok.decode(ids[:cut]).strip()
        count = len(tok.encode(candidate))
        if count == n:
            return candidate, count
        if best[1] < 0 or abs(count - n) < abs(best[1] - n):
            best = (candidate, count)
        cut = max(1, min(len(ids), cut + (n - count)))
    text, count = best
    for word in rng.sample(list(words), min(len(words), 16)) if count < n else ():
        longer = f"{text} {word}"  # one word short of n: a word that is one token closes the gap
        if len(tok.encode(longer)) == n:
            return longer, n
    return best
