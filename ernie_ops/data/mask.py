"""`ernie-ops data mask` and `data lint --pii`: personal data in a dataset, found and masked.

Streams like `convert` (64 KB blocks of JSONL lines; a JSON array is read whole, as convert reads
it), so memory stays flat with the file's size. A line is parsed only when the masker's trigger
(one C-level regex over its raw bytes) says a detector could find something in it; every other
line is copied byte for byte. Only texts are masked: JSON keys and structural values (role, from,
...) are kept, so the output is the same format as the input, one record a line. A line that is
not JSON is masked as plain text (its personal data must not survive either) and counted. A JSON
array (possibly pretty-printed) is written as JSONL, one compact record a line.

`--jobs N` (N > 1) masks in N processes where the input can be shared out, and the output is the
same as with one (a .gz output's content; it is then N gzip members, which every gzip reader reads
as one file):
- an uncompressed JSONL file is cut into N byte ranges at line starts; a forked worker masks each
  range, the first into the output's temporary file, the others into part files beside it
  (unnamed: nothing is left behind, whatever ends the command), which are appended in order in
  the kernel when all are done (they take up to (N-1)/N of the output's size again until then).
  No process coordinates, so N may be every CPU; each worker streams (flat memory in each).
- a compressed (.gz) JSONL file cannot be cut: this process reads, scans and writes it, and N
  workers mask the records the scan picks (a speed-up with 3 CPUs or more).
- a JSON array is read whole, so it is masked in this process (and a warning says so).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from ernie_ops.data.read import (
    Chunk,
    is_json_array,
    line_spans,
    read_chunks,
    read_items,
    require_file,
)
from ernie_ops.errors import UserError
from ernie_ops.files import append_file, atomic_output, gzip_writer, unnamed_files
from ernie_ops.privacy.masker import Masker, Scope
from ernie_ops.proc import die_with_parent

log = logging.getLogger(__name__)


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

    def add(self, part: MaskResult) -> None:
        """Count in what a worker found in its share."""
        self.records += part.records
        self.with_pii += part.with_pii
        self.not_json += part.not_json
        self.found.update(part.found)


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
    """Write SOURCE masked to OUT, in up to JOBS processes (see the module's docstring); the output
    is the same whatever JOBS is."""
    if jobs > 1 and is_json_array(source):
        log.warning("%s is a JSON array, which is read whole: masked in one process, not %d", source, jobs)
        jobs = 1
    if jobs > 1 and source.suffix != ".gz":
        spans = line_spans(source, jobs)
        if len(spans) > 1:
            if len(spans) < jobs:
                log.info("%s has too few lines for %d parts: masked in %d", source, jobs, len(spans))
            return _mask_spans(source, out, masker, spans, progress)
        jobs = 1  # a line or two: nothing to share out
    result = MaskResult(source, out, masker.strategy)
    with atomic_output(out, [source]) as f:
        _write(_masked(_lines(source, progress), masker, result, jobs), f, result)
    return result


def _write(blocks: Iterable[list[bytes]], f: IO[bytes], result: MaskResult) -> None:
    """Each block's lines to F, one a line (a last line without a newline gets one)."""
    for lines in blocks:
        result.records += len(lines) - sum(1 for raw in lines if not raw or raw.isspace())
        f.write(b"\n".join(lines) + b"\n")


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

_WORKER_MASKER: Masker | None = None  # the masker, inherited by the pool's workers at fork


def _worker_start(dies_with_parent: Callable[[], None]) -> None:
    """In a forked worker: DIES_WITH_PARENT (made in the parent) ends it even when the parent is
    killed outright. Ctrl-C is the parent's to handle (it ends the workers); the CLI's SIGTERM and
    SIGHUP handlers, which raise in the parent to run its cleanups, would make a traceback here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    dies_with_parent()


def _worker_mask(raws: list[bytes]) -> tuple[list[bytes], MaskResult]:
    assert _WORKER_MASKER is not None
    part = MaskResult(Path(), None, _WORKER_MASKER.strategy)
    return _mask_records(raws, _WORKER_MASKER, part), part


# -- byte ranges of an uncompressed file, one worker each -----------------------------------------


def _mask_spans(
    source: Path, out: Path, masker: Masker, spans: list[tuple[int, int]], progress: bool
) -> MaskResult:
    """SOURCE's SPANS masked by a forked worker each, the first straight into OUT's temporary file,
    the others into unnamed part files appended to it in order when all are done."""
    result = MaskResult(source, out, masker.strategy)
    compress = out.name.endswith(".gz")  # each worker writes a gzip member
    context = multiprocessing.get_context("fork")
    done = context.Array("q", len(spans), lock=False)  # bytes read, a slot per worker: no lock
    with (
        atomic_output(out, [source], compress=False) as f,
        unnamed_files(out.parent, len(spans) - 1) as parts,
    ):
        f.flush()
        workers: list[tuple[Any, Any]] = []
        try:
            for k, (span, fd) in enumerate(zip(spans, [f.fileno(), *parts], strict=True)):
                receive, send = context.Pipe(duplex=False)
                args = (source, span, fd, compress, masker, done, k, send, die_with_parent())
                worker = context.Process(target=_span_worker, args=args, daemon=True)
                worker.start()
                send.close()
                workers.append((worker, receive))
            for part in _outcomes(source, workers, done, progress):
                result.add(part)
        finally:
            for worker, _ in workers:
                if worker.exitcode is None:
                    worker.terminate()
            for worker, receive in workers:
                worker.join()
                receive.close()
        for fd in parts:
            append_file(fd, f.fileno())
    return result


def _span_worker(
    source: Path,
    span: tuple[int, int],
    fd: int,
    compress: bool,
    masker: Masker,
    done: Any,
    k: int,
    send: Any,
    dies_with_parent: Callable[[], None],
) -> None:
    """A worker: SPAN of SOURCE masked into the file open as FD; its MaskResult (or its error) sent."""
    _worker_start(dies_with_parent)
    result = MaskResult(source, None, masker.strategy)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20, closefd=False) as raw, _maybe_gzip(raw, compress) as f:
            chunks = _counted(read_chunks(source, span=span), done, k)
            _write((mask_lines(chunk.lines, masker, result) for chunk in chunks), f, result)
    except UserError as err:  # not picklable with its place and hint: sent as parts
        send.send(("user", err.message, err.where, err.hint))
    except Exception as err:
        send.send(("error", _picklable(err), traceback.format_exc()))
    else:
        send.send(("done", result))


def _picklable(err: Exception) -> Exception:
    try:
        pickle.dumps(err)
    except Exception:
        return RuntimeError(repr(err))
    return err


def _maybe_gzip(raw: IO[bytes], compress: bool) -> contextlib.AbstractContextManager[IO[bytes]]:
    if not compress:
        return contextlib.nullcontext(raw)
    return gzip_writer(raw)  # type: ignore[return-value]


def _counted(chunks: Iterator[Chunk], done: Any, k: int) -> Iterator[Chunk]:
    for chunk in chunks:
        yield chunk
        done[k] += len(chunk.data)


def _outcomes(
    source: Path, workers: list[tuple[Any, Any]], done: Any, progress: bool
) -> Iterator[MaskResult]:
    """Each worker's MaskResult as it ends; the first failure raised (the caller ends the others).
    A progress bar over the bytes all have read."""
    from tqdm import tqdm

    waiting = {receive: k for k, (_, receive) in enumerate(workers)}
    size = source.stat().st_size
    with tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=source.name,
        disable=None if progress else True,
        leave=False,
    ) as bar:
        while waiting:
            for receive in multiprocessing.connection.wait(list(waiting), timeout=0.2):
                k = waiting.pop(receive)
                yield _outcome(receive, workers[k][0], k)
            bar.update(min(sum(done), size) - bar.n)


def _outcome(receive: Any, worker: Any, k: int) -> MaskResult:
    try:
        message = receive.recv()
    except EOFError:  # it ended without a word: killed (out of memory?) or crashed
        worker.join()
        raise UserError(
            f"mask worker {k + 1} ended unexpectedly (exit code {worker.exitcode})",
            hint="the machine may be out of memory: try again with --jobs 1",
        ) from None
    if message[0] == "user":
        raise UserError(message[1], where=message[2], hint=message[3])
    if message[0] == "error":  # a bug, not a user mistake: its traceback in the worker goes with it
        raise RuntimeError(f"mask worker {k + 1} failed: {message[1]!r}\n{message[2]}") from message[1]
    return message[1]


def _masked(
    blocks: Iterator[tuple[int, list[bytes]]], masker: Masker, result: MaskResult, jobs: int
) -> Iterator[list[bytes]]:
    """The blocks' lines masked, in order. With JOBS > 1 (a compressed file) this process scans each
    block (one C-level pass) and sends only the lines it picks to a pool of forked workers; at most
    4 blocks a worker wait, so memory stays flat."""
    if jobs <= 1:
        for _first, lines in blocks:
            yield mask_lines(lines, masker, result)
        return
    global _WORKER_MASKER
    _WORKER_MASKER = masker
    # forked before the blocks are read (no progress thread yet): the workers inherit the masker
    pool = multiprocessing.get_context("fork").Pool(
        jobs, initializer=_worker_start, initargs=(die_with_parent(),)
    )
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
    result.add(part)  # records are counted where the lines are written
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
