"""`ernie-ops data convert`: common formats into ERNIEKit's, every lost record accounted for.

Records that are broken, or that ERNIEKit's format cannot express, go to a reject file with their
line number and reason; nothing is dropped silently. Outputs are written atomically.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ernie_ops.data.formats import TARGETS, Unsupported
from ernie_ops.data.lint import parsed_items, reason_kind
from ernie_ops.data.write import atomic_output
from ernie_ops.errors import UserError


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
    emit = TARGETS[to]
    result = ConvertResult(source, out, rejects_path(out))
    dumps = orjson.dumps
    with atomic_output(out) as good, atomic_output(result.rejects) as bad:
        for item, detected, parsed, problem in parsed_items(source, fmt, progress):
            result.records += 1
            result.format = result.format or detected
            if problem is None and parsed is not None:
                try:
                    good.write(dumps(emit(parsed)) + b"\n")
                    result.written += 1
                    continue
                except Unsupported as err:
                    problem = f"unsupported: {err}"
            assert problem is not None
            reason = problem.partition(": ")[2]
            result.rejected[reason_kind(reason)] += 1
            value = item.load()
            record = value if value is not None else item.raw.decode("utf-8", "replace")
            bad.write(dumps({"line": item.line, "reason": reason, "record": record}) + b"\n")
    if not result.rejected:
        result.rejects.unlink()
    return result
