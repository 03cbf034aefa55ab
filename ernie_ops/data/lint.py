"""`ernie-ops data lint`: every bad record of a dataset, with its line and reason, in one pass.

Memory stays flat with file size but for 12 bytes per record: records are streamed in blocks;
duplicates are found from compact arrays of a 64-bit hash and a line number per record
(RecordHashes). An exact duplicate is a warning with a count, not a bad record: ERNIEKit reads
it like any other (and trains on every copy); `data convert --dedupe` drops them.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.data.fast import FAST, FAST_FORMATS, maybe_control
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
from ernie_ops.data.read import (
    UNPARSED,
    Chunk,
    Item,
    chunk_items,
    is_json_array,
    read_chunks,
    read_items,
    require_file,
)
from ernie_ops.errors import UserError
from ernie_ops.files import atomic_output

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
    first_duplicate: tuple[int, int] | None = None  # (line, line of its first copy)
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
    """A reason without its specifics (indexes, byte values, line and column numbers), to count
    alike problems together; numbers inside words such as UTF-8 stay."""
    reason = re.sub(r"0x[0-9a-fA-F]+", "0x..", re.sub(r"\[\d+\]", "[i]", reason))
    return re.sub(r"(?<![\w-])\d+(?![\w])", "N", reason)


@dataclass(slots=True)
class Problem:
    index: int  # in its batch
    kind: str  # "bad" or "unsupported"
    reason: str
    value: Any = None  # the parsed JSON, when it could be parsed


@dataclass(slots=True)
class Batch:
    """Consecutive records. `parsed[i]` is None for a record with a problem (and for every record
    when the caller did not ask for them: lint without a tokenizer only needs the verdicts)."""

    format: str | None
    lines: Sequence[int]
    raws: list[bytes]
    parsed: list[Parsed | None]
    problems: list[Problem]


def parsed_batches(
    path: Path, fmt: str = "auto", progress: bool = True, build: bool = True
) -> Iterator[Batch]:
    """Every record of a file, in batches. The format is detected from the first readable record
    when `fmt` is auto. A JSONL block whose records are all in their format's common shape takes
    one typed, C-level decode (fast.py); any other block goes record by record, and a record the
    typed decoder rejects goes down the precise path, which says why."""
    require_file(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}", hint=f"one of: auto, {', '.join(FORMATS)}")
    state = _Detection(None if fmt == "auto" else fmt)
    if is_json_array(path):
        yield _item_batch(list(read_items(path)), state, build)
        return
    for chunk in _with_progress(path, read_chunks(path), progress):
        fast = FAST_FORMATS.get(state.format or "")
        # the block, and its first line whole (it may have begun in the block before)
        control = maybe_control(chunk.data) or maybe_control(chunk.lines[0])
        records = fast.block(chunk.lines, build) if fast and not control else None
        if records is not None:
            lines = range(chunk.first, chunk.first + len(records))
            yield Batch(state.format, lines, chunk.lines, records if build else [None] * len(records), [])
        else:
            yield _item_batch(chunk_items(chunk), state, build)


@dataclass
class _Detection:
    format: str | None  # None until the first readable record shows it


def _item_batch(items: list[Item], state: _Detection, build: bool) -> Batch:
    """Records one at a time: the typed decoder where it accepts them, else formats.py."""
    parsed: list[Parsed | None] = []
    problems = []
    for i, item in enumerate(items):
        fast = FAST.get(state.format or "")
        record = fast(item.raw) if fast and item.value is UNPARSED and not maybe_control(item.raw) else None
        if record is None:
            record, problem = _precise(item, state)
            if problem:
                kind, reason = problem
                problems.append(Problem(i, kind, reason, item.value))
        parsed.append(record if build else None)
    return Batch(state.format, [item.line for item in items], [item.raw for item in items], parsed, problems)


def _precise(item: Item, state: _Detection) -> tuple[Parsed | None, tuple[str, str] | None]:
    """(record, None) or (None, ("bad" or "unsupported", why)), by formats.py."""
    value = item.load()
    if item.error:
        return None, ("bad", item.error)
    if state.format is None:
        state.format = detect(value)
        if state.format is None:
            keys = ", ".join(list(value)[:6]) if isinstance(value, dict) else type(value).__name__
            return None, ("bad", f"unknown format (fields: {keys}); pass --format")
    try:
        parsed = parse(state.format, value)
        control = control_character(item.raw, value)
        if control:
            raise Bad(control)
        return parsed, None
    except Bad as err:
        return None, ("bad", str(err))
    except Unsupported as err:
        return None, ("unsupported", str(err))


def parsed_items(
    path: Path, fmt: str = "auto", progress: bool = True
) -> Iterator[tuple[Item, str | None, Parsed | None, str | None]]:
    """(item, format, parsed record, problem) for each record, problem as "bad: ..." or
    "unsupported: ..." (for callers that want records one by one, such as preview)."""
    for batch in parsed_batches(path, fmt, progress):
        problems = {p.index: p for p in batch.problems}
        for i, (line, raw, parsed) in enumerate(zip(batch.lines, batch.raws, batch.parsed, strict=True)):
            p = problems.get(i)
            value = p.value if p and p.value is not None else UNPARSED
            yield Item(line, value, raw), batch.format, parsed, f"{p.kind}: {p.reason}" if p else None


def _with_progress(path: Path, chunks: Iterator[Chunk], enabled: bool) -> Iterator[Chunk]:
    if not enabled:
        yield from chunks
        return
    from tqdm import tqdm

    size = path.stat().st_size  # of the file as stored: a .gz bar stops short of 100%
    with tqdm(total=size, unit="B", unit_scale=True, desc=path.name, disable=None, leave=False) as bar:
        for chunk in chunks:
            bar.update(min(len(chunk.data), size - bar.n))
            yield chunk


def lint_file(
    path: Path,
    fmt: str = "auto",
    report: Report | None = None,
    tokens: TokenCounter | None = None,
    progress: bool = True,
) -> FileLint:
    result = FileLint(path, tokens=TokenStats(tokens.max_seq_len) if tokens else None)
    seen = RecordHashes()

    def flag(line: int, reason: str) -> None:
        result.bad += 1
        result.reasons[reason_kind(reason)] += 1
        if report:
            report(path, line, reason)

    for batch in parsed_batches(path, fmt, progress, build=tokens is not None):
        result.records += len(batch.raws)
        result.format = result.format or batch.format
        seen.add(batch.raws, batch.lines)
        problems = batch.problems
        if tokens and result.tokens:
            problems = sorted(problems + _token_problems(batch, tokens, result.tokens), key=lambda p: p.index)
        for problem in problems:
            if problem.kind == "unsupported":
                result.unsupported[problem.reason] += 1
            else:
                flag(batch.lines[problem.index], problem.reason)
    duplicates = seen.duplicates()
    result.duplicates = len(duplicates)
    result.first_duplicate = duplicates[0] if duplicates else None
    return result


def _token_problems(batch: Batch, tokens: TokenCounter, stats: TokenStats) -> list[Problem]:
    """Count the tokens of each good record; the ones ERNIEKit would drop are bad.
    VL records are not counted: their image tokens depend on the VL processor."""
    dropped = f"over max_seq_len {tokens.max_seq_len} even for its last turn: ERNIEKit drops it"
    return [
        Problem(i, "bad", dropped)
        for i, parsed in enumerate(batch.parsed)
        if isinstance(parsed, Conversation | Preference) and tokens.add(parsed, stats) == "dropped"
    ]


class RecordHashes:
    """Finds repeated records from a 64-bit hash and a line number per record (12 bytes): about
    7 MB for a 1 GB file of 1.7 KB records, plus 9 bytes per record for a moment at the end.
    That is the only memory that grows with the file; exact duplicate detection in one pass needs
    some per-record state, and this is the least we found."""

    def __init__(self) -> None:
        self.hashes = array("q")
        self.lines = array("I")

    def add(self, raws: list[bytes], lines: Sequence[int]) -> None:
        self.hashes.extend(map(hash, raws))
        self.lines.extend(lines)

    def duplicates(self) -> list[tuple[int, int]]:
        """(line, line of its first copy) for every repeated record, in line order."""
        import numpy as np

        h = np.frombuffer(self.hashes, dtype=np.int64)
        ordered = np.sort(h)
        repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])  # few: usually none
        del ordered
        if not repeated.size:
            return []
        first: dict[int, int] = {}
        pairs = []
        for i in _members(h, repeated):
            line, key = int(self.lines[i]), int(h[i])
            if key in first:
                pairs.append((line, first[key]))
            else:
                first[key] = line
        return sorted(pairs)


def _members(h: Any, values: Any, step: int = 1 << 16) -> Iterator[int]:
    """Indexes of the elements of `h` that are in the sorted array `values`, in order, in slices
    so that the temporaries stay small."""
    import numpy as np

    for start in range(0, h.size, step):
        part = h[start : start + step]
        at = np.minimum(np.searchsorted(values, part), values.size - 1)
        yield from (start + np.flatnonzero(values[at] == part)).tolist()


class TokenCounter:
    """Token lengths as ERNIEKit computes them, and what its SFT reader would truncate or drop."""

    def __init__(self, model_dir: Path, max_seq_len: int):
        if not (Path(model_dir) / "tokenizer_config.json").is_file():
            raise UserError(f"{model_dir}: no tokenizer_config.json", hint="give a model directory")
        from ernie_ops.extras import optional_imports

        with optional_imports("cpu", "counting tokens (--tokenizer)"):
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


def histogram(stats: TokenStats, out: Path, title: str, inputs: Sequence[Path] = ()) -> Path:
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
    with atomic_output(out, inputs) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
