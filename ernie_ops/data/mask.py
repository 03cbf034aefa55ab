"""`ernie-ops data mask` and `data lint --pii`: personal data in a dataset, found and masked.

Streams like `convert` (64 KB blocks of JSONL lines; a JSON array is read whole, as convert reads
it), so memory stays flat with the file's size. A line is parsed only when the masker's trigger
(one C-level regex over its raw bytes) says a detector could find something in it; every other
line is copied byte for byte. Only texts are masked: JSON keys and structural values (role, from,
...) are kept, so the output is the same format as the input, one record a line. A line that is
not JSON is masked as plain text (its personal data must not survive either) and counted. A JSON
array (possibly pretty-printed) is written as JSONL, one compact record a line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ernie_ops.data.read import is_json_array, read_chunks, read_items, require_file
from ernie_ops.errors import UserError
from ernie_ops.files import atomic_output
from ernie_ops.privacy.masker import Masker, Scope


@dataclass
class MaskResult:
    source: Path
    output: Path | None
    strategy: str = "placeholder"
    records: int = 0
    with_pii: int = 0  # records in which something was found
    found: Counter = field(default_factory=Counter)  # findings by type
    not_json: int = 0  # lines masked as plain text

    def to_dict(self) -> dict:
        return {
            "source": str(self.source),
            "output": str(self.output) if self.output else None,
            "strategy": self.strategy,
            "records": self.records,
            "records_with_pii": self.with_pii,
            "found": dict(sorted(self.found.items())),
            "not_json": self.not_json,
        }


def _lines(path: Path, progress: bool) -> Iterator[tuple[int, list[bytes]]]:
    """(number of the first line, the lines) in blocks; a JSON array's records one per line."""
    require_file(path)
    if is_json_array(path):  # parsed whole, as convert does; written one compact record a line
        for item in read_items(path):
            if item.error:
                raise UserError(f"{item.error}", where=f"{path}:{item.line}", hint="fix the JSON array")
            yield item.line, [orjson.dumps(item.value)]
        return
    chunks = read_chunks(path)
    if progress:
        from ernie_ops.data.lint import _with_progress

        chunks = _with_progress(path, chunks, True)
    for chunk in chunks:
        yield chunk.first, chunk.lines


def mask_file(source: Path, out: Path, masker: Masker, progress: bool = True) -> MaskResult:
    result = MaskResult(source, out, masker.strategy)
    with atomic_output(out, [source]) as f:
        for _first, lines in _lines(source, progress):
            result.records += len(lines) - sum(1 for raw in lines if not raw or raw.isspace())
            f.write(b"\n".join(mask_lines(lines, masker, result)) + b"\n")
    return result


def mask_lines(lines: list[bytes], masker: Masker, result: MaskResult) -> list[bytes]:
    """LINES (raw JSONL records, no newlines) with their personal data masked, counted in RESULT.
    Only the lines the masker's trigger picks are parsed (usually few); the others, and the lines
    in which nothing was found, are returned as they were, byte for byte."""
    hits = masker.hit_lines(lines)
    if not hits:
        return lines
    out = list(lines)
    for i in hits:
        raw = out[i]
        counts: Counter = Counter()
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            masked_text = masker.mask_text(raw.decode("utf-8", "replace"), Scope(), counts)
            if counts:
                result.not_json += 1
                out[i] = masked_text.encode()
        else:
            masked = masker.mask_value(record, Scope(), counts)
            if counts:
                out[i] = orjson.dumps(masked)
        if counts:
            result.with_pii += 1
            result.found.update(counts)
    return out


Where = Callable[[int, str, str, int, int], None]  # (line, field, type, start, end) per finding


def scan_file(source: Path, masker: Masker, report: Where | None = None, progress: bool = True) -> MaskResult:
    """What `mask` would replace, by type, with positions for REPORT (never the values)."""
    result = MaskResult(source, None, masker.strategy)
    for first, lines in _lines(source, progress):
        for n, raw in enumerate(lines, first):
            if not raw or raw.isspace():
                continue
            result.records += 1
            if not masker.may_hold(raw):
                continue
            try:
                found = list(masker.findings_in(orjson.loads(raw)))
            except orjson.JSONDecodeError:
                found = [("(not JSON)", f) for f in masker.find(raw.decode("utf-8", "replace"))]
                result.not_json += bool(found)
            if found:
                result.with_pii += 1
            for where, finding in found:
                result.found[finding.type] += 1
                if report:
                    report(n, where, finding.type, finding.start, finding.end)
    return result
