"""`ernie-ops data convert`: common formats into ERNIEKit's, every lost record accounted for.

Records that are broken, or that ERNIEKit's format cannot express, go to a reject file with their
line number and reason; nothing is dropped silently. Exact duplicates are counted (ERNIEKit trains
on every copy); with `dedupe` every copy after the first goes to the reject file too. Outputs are
written atomically and never replace an input.

With a masker (`convert --mask`), personal data is masked in what is written, the reject file
included: the converted records' texts (as `data mask` does, keys and labels kept), and each
rejected record before it is written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson

from ernie_ops.data.formats import TARGETS, Conversation, Unsupported
from ernie_ops.data.lint import Batch, Problem, RecordHashes, parsed_batches, reason_kind
from ernie_ops.data.mask import MaskResult, mask_lines
from ernie_ops.errors import UserError
from ernie_ops.files import atomic_output, check_output
from ernie_ops.privacy.masker import Masker


@dataclass
class ConvertResult:
    source: Path
    output: Path
    rejects: Path
    format: str | None = None
    records: int = 0
    written: int = 0
    rejected: Counter = field(default_factory=Counter)
    duplicates: int = 0  # exact copies of an earlier record (rejected when deduped, else written)
    first_duplicate: tuple[int, int] | None = None  # (line, line of its first copy)
    masked: MaskResult | None = None  # what --mask replaced (None: not masked)

    def to_dict(self) -> dict:
        return {
            "source": str(self.source),
            "output": str(self.output),
            "rejects": str(self.rejects) if self.rejected else None,
            "format": self.format,
            "records": self.records,
            "written": self.written,
            "rejected": dict(self.rejected),
            "duplicates": self.duplicates,
            "masked": (
                {k: v for k, v in self.masked.to_dict().items() if k not in ("source", "output", "records")}
                if self.masked
                else None
            ),
        }


def rejects_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".gz").removesuffix(".jsonl") + ".rejects.jsonl")


def convert(
    source: Path,
    out: Path,
    to: str,
    fmt: str = "auto",
    progress: bool = True,
    dedupe: bool = False,
    masker: Masker | None = None,
) -> ConvertResult:
    if to not in TARGETS:
        raise UserError(f"--to must be one of {', '.join(TARGETS)}, not {to!r}")
    result = ConvertResult(source, out, rejects_path(out))
    found = result.masked = MaskResult(source, out, masker.strategy) if masker else None
    _check_rejects_path(source, out, result.rejects)
    first_lines: dict[int, int] = {}  # dedupe: record hash -> line of its first copy
    hashes = RecordHashes()  # otherwise: counted at the end, 12 bytes per record
    with atomic_output(out, [source]) as good, atomic_output(result.rejects, [source]) as bad:
        for batch in parsed_batches(source, fmt, progress):
            result.records += len(batch.raws)
            result.format = result.format or batch.format
            if dedupe:
                result.duplicates += _reject_duplicates(batch, first_lines)
            else:
                hashes.add(batch.raws, batch.lines)
            lines, written, problems = _encode(batch, to)
            if masker and found and lines:  # lines: each one ends with a newline
                lines = b"\n".join(mask_lines(lines[:-1].split(b"\n"), masker, found)) + b"\n"
            good.write(lines)  # one write per batch
            result.written += written
            for p in problems:
                result.rejected[reason_kind(p.reason)] += 1
                raw = batch.raws[p.index]
                if masker and found:
                    raw = mask_lines([raw], masker, found)[0]
                line = batch.lines[p.index]
                bad.write(orjson.dumps({"line": line, "reason": p.reason, "record": _record(raw)}) + b"\n")
    if not dedupe:
        duplicates = hashes.duplicates()
        result.duplicates = len(duplicates)
        result.first_duplicate = duplicates[0] if duplicates else None
    if not result.rejected:
        result.rejects.unlink()
    return result


def _check_rejects_path(source: Path, out: Path, rejects: Path) -> None:
    """The reject file's name comes from OUT's: say so when it is the one that collides."""
    try:
        check_output(rejects, [source])
    except UserError as err:
        raise UserError(
            f"{err.message} (it is where the records rejected from {out} go)",
            hint="give OUT another name",
        ) from None


def _reject_duplicates(batch: Batch, first_lines: dict[int, int]) -> int:
    """Mark every good record of the batch that repeats an earlier one as a problem (it goes to the
    reject file, not the output); return how many repeat one."""
    lines = list(batch.lines)
    firsts = list(map(first_lines.setdefault, map(hash, batch.raws), lines))
    if firsts == lines:  # the usual case, checked in C: no copies in this batch
        return 0
    copies = [i for i, (first, line) in enumerate(zip(firsts, lines, strict=True)) if first != line]
    for i in copies:
        if batch.parsed[i] is not None:  # a bad copy is rejected for what is wrong with it
            batch.parsed[i] = None
            batch.problems.append(Problem(i, "duplicate", f"exact duplicate of line {firsts[i]}"))
    return len(copies)


_encode_lines = msgspec.json.Encoder().encode_lines


def _encode(batch: Batch, to: str) -> tuple[bytes, int, list[Problem]]:
    """(JSONL of the batch's records in the target format, how many, every problem: the batch's
    own and what the target cannot express, in line order)."""
    if to == "erniekit-sft" and set(map(type, batch.parsed)) == {Conversation}:
        # a Conversation encodes as its erniekit-sft line (formats.Conversation): one C call
        return _encode_lines(batch.parsed), len(batch.parsed), []
    emit, dumps = TARGETS[to], orjson.dumps
    written, problems = [], list(batch.problems)
    for i, parsed in enumerate(batch.parsed):
        if parsed is not None:
            try:
                written.append(dumps(emit(parsed)) + b"\n")
            except Unsupported as err:
                problems.append(Problem(i, "unsupported", str(err)))
    problems.sort(key=lambda p: p.index)
    return b"".join(written), len(written), problems


def _record(raw: bytes) -> Any:
    """The rejected record, whole and as it was: its JSON inline when it is JSON (not re-encoded, so
    nesting deeper than orjson writes is kept), else its text."""
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
    return orjson.Fragment(raw.strip())
