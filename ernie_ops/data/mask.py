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

import multiprocessing
import signal
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def mask_file(source: Path, out: Path, masker: Masker, progress: bool = True, jobs: int = 1) -> MaskResult:
    """Write SOURCE masked to OUT. With JOBS > 1 (JSONL only), worker processes mask the records
    the trigger picks while this one reads, scans and writes; the output is the same, in order."""
    result = MaskResult(source, out, masker.strategy)
    if jobs > 1 and is_json_array(source):
        jobs = 1  # read whole, one record a block: nothing to share out
    with atomic_output(out, [source]) as f:
        for lines in _masked(_lines(source, progress), masker, result, jobs):
            result.records += len(lines) - sum(1 for raw in lines if not raw or raw.isspace())
            f.write(b"\n".join(lines) + b"\n")
    return result


def mask_lines(lines: list[bytes], masker: Masker, result: MaskResult) -> list[bytes]:
    """LINES (raw JSONL records, no newlines) with their personal data masked, counted in RESULT.
    Only the lines the masker's trigger picks are parsed (usually few); the others, and the lines
    in which nothing was found, are returned as they were, byte for byte."""
    hits = masker.hit_lines(lines)
    if not hits:
        return lines
    out = list(lines)
    for i, raw in zip(hits, _mask_records([lines[i] for i in hits], masker, result), strict=True):
        out[i] = raw
    return out


def _mask_records(raws: list[bytes], masker: Masker, result: MaskResult) -> list[bytes]:
    out = []
    for raw in raws:
        counts: Counter = Counter()
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            masked_text = masker.mask_text(raw.decode("utf-8", "replace"), Scope(), counts)
            if counts:
                result.not_json += 1
                raw = masked_text.encode()
        else:
            masked = masker.mask_value(record, Scope(), counts)
            if counts:
                raw = orjson.dumps(masked)
        if counts:
            result.with_pii += 1
            result.found.update(counts)
        out.append(raw)
    return out


# -- worker processes ---------------------------------------------------------------------------

_WORKER_MASKER: Masker | None = None  # the masker, inherited by the workers at fork


def _worker_start() -> None:
    # Ctrl-C is the parent's to handle (it ends the pool); the CLI's SIGTERM/SIGHUP handlers, which
    # raise in the parent to run its cleanups, would make the pool's terminate() a traceback here
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _worker_mask(raws: list[bytes]) -> tuple[list[bytes], MaskResult]:
    assert _WORKER_MASKER is not None
    part = MaskResult(Path(), None, _WORKER_MASKER.strategy)
    return _mask_records(raws, _WORKER_MASKER, part), part


def _masked(
    blocks: Iterator[tuple[int, list[bytes]]], masker: Masker, result: MaskResult, jobs: int
) -> Iterator[list[bytes]]:
    """The blocks' lines masked, in order. With JOBS > 1 this process scans each block (one C-level
    pass) and sends only the lines it picks to a pool of forked workers; at most 4 blocks a worker
    wait, so memory stays flat."""
    if jobs <= 1:
        for _first, lines in blocks:
            yield mask_lines(lines, masker, result)
        return
    global _WORKER_MASKER
    _WORKER_MASKER = masker
    # forked before the blocks are read (no progress thread yet): the workers inherit the masker
    pool = multiprocessing.get_context("fork").Pool(jobs, initializer=_worker_start)
    pending: deque[tuple[list[bytes], list[int], Any]] = deque()
    try:
        for _first, lines in blocks:
            hits = masker.hit_lines(lines)
            job = pool.apply_async(_worker_mask, ([lines[i] for i in hits],)) if hits else None
            pending.append((lines, hits, job))
            while pending and (len(pending) > 4 * jobs or pending[0][2] is None or pending[0][2].ready()):
                yield _merged(*pending.popleft(), result)
        while pending:
            yield _merged(*pending.popleft(), result)
    finally:
        pool.terminate()
        pool.join()
        _WORKER_MASKER = None


def _merged(lines: list[bytes], hits: list[int], job: Any, result: MaskResult) -> list[bytes]:
    if job is None:
        return lines
    masked, part = job.get()
    result.with_pii += part.with_pii
    result.not_json += part.not_json
    result.found.update(part.found)
    out = list(lines)
    for i, raw in zip(hits, masked, strict=True):
        out[i] = raw
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
