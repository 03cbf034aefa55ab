"""`ernie-ops data convert`: common formats into ERNIEKit's, every lost record accounted for.

Records that are broken, or that ERNIEKit's format cannot express, go to a reject file with their
line number and reason; nothing is dropped silently. Outputs are written atomically.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson

from ernie_ops.data.formats import TARGETS, Conversation, Unsupported
from ernie_ops.data.lint import Batch, Problem, parsed_batches, reason_kind
from ernie_ops.errors import UserError
from ernie_ops.files import atomic_output


@dataclass
class ConvertResult:
    source: Path
    output: Path
    rejects: Path
    format: str | None = None
    records: int = 0
    written: int = 0
    rejected: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {
            "source": str(self.source),
            "output": str(self.output),
            "rejects": str(self.rejects) if self.rejected else None,
            "format": self.format,
            "records": self.records,
            "written": self.written,
            "rejected": dict(self.rejected),
        }


def rejects_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".gz").removesuffix(".jsonl") + ".rejects.jsonl")


def convert(source: Path, out: Path, to: str, fmt: str = "auto", progress: bool = True) -> ConvertResult:
    if to not in TARGETS:
        raise UserError(f"--to must be one of {', '.join(TARGETS)}, not {to!r}")
    if out.resolve() == source.resolve():
        raise UserError("the output would overwrite the input", hint="write to another file")
    result = ConvertResult(source, out, rejects_path(out))
    with atomic_output(out) as good, atomic_output(result.rejects) as bad:
        for batch in parsed_batches(source, fmt, progress):
            result.records += len(batch.raws)
            result.format = result.format or batch.format
            lines, written, problems = _encode(batch, to)
            good.write(lines)  # one write per batch
            result.written += written
            for p in problems:
                result.rejected[reason_kind(p.reason)] += 1
                record = _record(p, batch.raws[p.index])
                bad.write(
                    orjson.dumps({"line": batch.lines[p.index], "reason": p.reason, "record": record}) + b"\n"
                )
    if not result.rejected:
        result.rejects.unlink()
    return result


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


def _record(problem: Problem, raw: bytes) -> Any:
    """The rejected record, whole: as parsed JSON when it is JSON, else as text."""
    if problem.value is not None:
        return problem.value
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = None
    return value if value is not None else raw.decode("utf-8", "replace")
