"""`ernie-ops data lint`: every bad record of a dataset, with its line and reason, in one pass.

Memory stays flat with file size: records are streamed; duplicates are found from two compact
arrays (a 64-bit hash and a line number per record, 16 bytes each) sorted once at the end.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ernie_ops.data.fast import FAST, maybe_control
from ernie_ops.data.formats import (
    FORMATS,
    Bad,
    Conversation,
    Parsed,
    Preference,
    Unsupported,
    control_character,
    detect,
    parse,
)
from ernie_ops.data.read import UNPARSED, Item, read_items, require_file
from ernie_ops.errors import UserError

Report = Callable[[Path, int, str], None]  # (file, line, reason) for each bad record


@dataclass
class TokenStats:
    max_seq_len: int
    lengths: array = field(default_factory=lambda: array("I"))
    truncated: int = 0
    dropped: int = 0

    def summary(self) -> dict:
        import numpy as np

        if not self.lengths:
            return {"max_seq_len": self.max_seq_len, "records": 0}
        x = np.frombuffer(self.lengths, dtype=np.uint32)
        return {
            "max_seq_len": self.max_seq_len,
            "records": int(x.size),
            "min": int(x.min()),
            "median": float(np.median(x)),
            "p95": float(np.percentile(x, 95)),
            "max": int(x.max()),
            "truncated": self.truncated,
            "dropped": self.dropped,
        }


@dataclass
class FileLint:
    path: Path
    format: str | None = None
    records: int = 0
    bad: int = 0
    duplicates: int = 0
    reasons: Counter = field(default_factory=Counter)
    unsupported: Counter = field(default_factory=Counter)
    tokens: TokenStats | None = None

    @property
    def bad_fraction(self) -> float:
        return self.bad / self.records if self.records else 0.0

    def to_dict(self) -> dict:
        return {
            "file": str(self.path),
            "format": self.format,
            "records": self.records,
            "bad": self.bad,
            "duplicates": self.duplicates,
            "reasons": dict(self.reasons),
            "unsupported": dict(self.unsupported),
            "tokens": self.tokens.summary() if self.tokens else None,
        }


def reason_kind(reason: str) -> str:
    """A reason without its specifics, to count alike problems together."""
    return re.sub(r"\d+", "N", re.sub(r"\[\d+\]", "[i]", reason))


def parsed_items(
    path: Path, fmt: str = "auto", progress: bool = True
) -> Iterator[tuple[Item, str | None, Parsed | None, str | None]]:
    """(item, format, parsed record, problem) for each record. The format is detected from the
    first readable record when `fmt` is auto; problem is "bad: ..." or "unsupported: ..."."""
    require_file(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}", hint=f"one of: auto, {', '.join(FORMATS)}")
    detected = None if fmt == "auto" else fmt
    fast = FAST.get(detected) if detected else None
    for item in _with_progress(path, read_items(path), progress):
        if fast is not None and item.value is UNPARSED and not maybe_control(item.raw):
            parsed = fast(item.raw)  # typed decoding: None sends the record down the precise path
            if parsed is not None:
                yield item, detected, parsed, None
                continue
        value = item.load()
        if item.error:
            yield item, detected, None, f"bad: {item.error}"
            continue
        if detected is None:
            detected = detect(value)
            if detected is None:
                keys = ", ".join(list(value)[:6]) if isinstance(value, dict) else type(value).__name__
                yield item, None, None, f"bad: unknown format (fields: {keys}); pass --format"
                continue
            fast = FAST.get(detected)
        try:
            parsed = parse(detected, value)
            control = control_character(item.raw, value)
            if control:
                raise Bad(control)
            yield item, detected, parsed, None
        except Bad as err:
            yield item, detected, None, f"bad: {err}"
        except Unsupported as err:
            yield item, detected, None, f"unsupported: {err}"


def _with_progress(path: Path, items: Iterator[Item], enabled: bool) -> Iterator[Item]:
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    size = path.stat().st_size
    with tqdm(total=size, unit="B", unit_scale=True, desc=path.name, disable=None, leave=False) as bar:
        done = 0
        for n, item in enumerate(items, 1):
            done += len(item.raw) + 1
            if n % 20000 == 0:
                bar.update(min(done, size) - bar.n)
            yield item


def lint_file(
    path: Path,
    fmt: str = "auto",
    report: Report | None = None,
    tokens: TokenCounter | None = None,
    progress: bool = True,
) -> FileLint:
    result = FileLint(path, tokens=TokenStats(tokens.max_seq_len) if tokens else None)
    hashes, lines = array("q"), array("Q")

    def flag(line: int, reason: str) -> None:
        result.bad += 1
        result.reasons[reason_kind(reason)] += 1
        if report:
            report(path, line, reason)

    for item, detected, parsed, problem in parsed_items(path, fmt, progress):
        result.records += 1
        result.format = result.format or detected
        hashes.append(hash(item.raw))
        lines.append(item.line)
        # VL records are not counted: their image tokens depend on the VL processor
        if problem is None and isinstance(parsed, Conversation | Preference) and tokens and result.tokens:
            status = tokens.add(parsed, result.tokens)
            if status == "dropped":
                problem = (
                    f"bad: over max_seq_len {tokens.max_seq_len} even for its last turn: ERNIEKit drops it"
                )
        if problem is None:
            continue
        kind, _, reason = problem.partition(": ")
        if kind == "unsupported":
            result.unsupported[reason] += 1
        else:
            flag(item.line, reason)
    for line, first in _duplicates(hashes, lines):
        result.duplicates += 1
        flag(line, f"duplicate of line {first}")
    return result


def _duplicates(hashes: array, lines: array) -> Iterator[tuple[int, int]]:
    """(line, line of its first copy) for every repeated record, in line order."""
    import numpy as np

    if len(hashes) < 2:
        return
    h = np.frombuffer(hashes, dtype=np.int64)
    order = np.argsort(h, kind="stable")
    sorted_h = h[order]
    repeat = np.flatnonzero(sorted_h[1:] == sorted_h[:-1]) + 1
    if not repeat.size:
        return
    ln = np.frombuffer(lines, dtype=np.uint64)
    # the first copy of each group is the group's first element in the stable order
    group_start = np.maximum.accumulate(
        np.where(np.r_[True, sorted_h[1:] != sorted_h[:-1]], np.arange(h.size), 0)
    )
    pairs = sorted((int(ln[order[i]]), int(ln[order[group_start[i]]])) for i in repeat)
    yield from pairs


class TokenCounter:
    """Token lengths as ERNIEKit computes them, and what its SFT reader would truncate or drop."""

    def __init__(self, model_dir: Path, max_seq_len: int):
        if not (Path(model_dir) / "tokenizer_config.json").is_file():
            raise UserError(f"{model_dir}: no tokenizer_config.json", hint="give a model directory")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from ernie.tokenizer import Ernie4_5_Tokenizer
            from paddleformers.utils.log import logger

        logger.set_level("WARNING")
        self.tokenizer = Ernie4_5_Tokenizer.from_pretrained(str(model_dir))
        self.max_seq_len = max_seq_len

    def turns(self, parsed: Conversation | Preference) -> list[tuple[int, int]]:
        """(prompt tokens, answer tokens) per turn, the way ERNIEKit encodes them."""
        messages = [{"role": "system", "content": parsed.system}] if parsed.system else []
        if isinstance(parsed, Preference):
            users, assistants = (
                parsed.users,
                [*parsed.assistants, max(parsed.chosen, parsed.rejected, key=len)[0]],
            )
        else:
            users, assistants = parsed.users, parsed.assistants
        for u, a in zip(users, assistants, strict=True):
            messages += [{"role": "user", "content": u.strip()}, {"role": "assistant", "content": a.strip()}]
        encoded = self.tokenizer.encode_chat_inputs({"messages": messages})
        return [(len(src), len(tgt)) for src, tgt in encoded]

    def add(self, parsed: Conversation | Preference, stats: TokenStats) -> str:
        """Record the lengths; return kept, truncated or dropped (ernie/dataset/finetuning.py rules)."""
        turns = self.turns(parsed)
        total = sum(s + t for s, t in turns)
        stats.lengths.append(total)
        cur, used = 1, 0
        for src, tgt in reversed(turns):
            if src + tgt > self.max_seq_len + 1 - cur - 8:  # 8 tokens reserved per turn
                break
            used += src + tgt
            cur = used
        if used <= 1 + 8:
            stats.dropped += 1
            return "dropped"
        if used < total:
            stats.truncated += 1
            return "truncated"
        return "kept"


def histogram(stats: TokenStats, out: Path, title: str) -> Path:
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.frombuffer(stats.lengths, dtype=np.uint32)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(x, bins=min(60, max(5, int(np.sqrt(x.size)))), color="#3b6fb6")
    ax.axvline(stats.max_seq_len, color="#c0392b", linestyle="--", label=f"max_seq_len {stats.max_seq_len}")
    ax.set_xlabel("tokens per record (ERNIEKit's encoding)")
    ax.set_ylabel("records")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
