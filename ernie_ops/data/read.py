"""Stream records out of JSONL or JSON-array files (plain or .gz), each with its line number.

A record that cannot be read (bad UTF-8, invalid JSON, nested too deeply) is yielded with its error
rather than raised, so one bad line never hides the rest of the file. A file that cannot be read
(not a regular file, a truncated or damaged .gz) is a UserError naming the file and line.

JSONL is read in blocks of whole lines (`read_chunks`): splitting a 64 KB block in C is cheaper
than iterating a file line by line, and it lets the typed fast path decode a block of records per
call.
"""

from __future__ import annotations

import gzip
import json
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson

from ernie_ops.errors import UserError
from ernie_ops.files import regular_file

UNPARSED = object()


@dataclass(slots=True)
class Item:
    line: int
    value: Any  # the parsed JSON; UNPARSED until load(); None when unreadable
    raw: bytes  # the record's bytes, without the newline (duplicates, reject files, fast paths)
    error: str | None = None

    def load(self) -> Any:
        """Parse the raw bytes (JSONL records are parsed only when a fast path needs it)."""
        if self.value is UNPARSED:
            try:
                self.value = orjson.loads(self.raw)
            except orjson.JSONDecodeError as err:
                self.value, self.error = None, _json_error(self.raw, err)
        return self.value


def require_file(path: Path) -> Path:
    """PATH if it is a regular file: a FIFO would hang the reader and /dev/zero fill the memory."""
    return regular_file(path, "dataset")


GZIP_MAGIC = b"\x1f\x8b"
# what reading a file can raise midway: a .gz cut short (EOFError), damaged gzip data (BadGzipFile,
# an OSError, or zlib.error), an I/O error
READ_ERRORS = (EOFError, OSError, zlib.error)


def unreadable(path: Path, line: int, err: BaseException) -> UserError:
    """The UserError for a file whose reading failed at LINE (the lines before it were read)."""
    hint: str | None = "copy or compress the file again"
    if isinstance(err, EOFError):
        what = "the gzip data ends early: the file is truncated"
    elif isinstance(err, gzip.BadGzipFile | zlib.error):
        what = f"the gzip data is damaged ({err})"
    else:
        what, hint = f"cannot read it: {getattr(err, 'strerror', None) or err}", None
    return UserError(what, where=f"{path}:{line}", hint=hint)


def open_binary(path: Path) -> IO[bytes]:
    require_file(path)
    if path.suffix != ".gz":
        return path.open("rb")
    with path.open("rb") as f:
        if f.read(2) != GZIP_MAGIC:
            raise UserError(f"{path}: named .gz but not gzip-compressed", hint="rename it without .gz")
    return gzip.open(path, "rb")  # type: ignore[return-value]


def is_json_array(path: Path) -> bool:
    try:
        with open_binary(path) as f:
            return _first_byte(f) == b"["
    except READ_ERRORS as err:
        raise unreadable(path, 1, err) from None


def read_items(path: Path) -> Iterator[Item]:
    if is_json_array(path):
        yield from _json_array(path)
        return
    for chunk in read_chunks(path):
        yield from chunk_items(chunk)


def chunk_items(chunk: Chunk) -> list[Item]:
    # ERNIEKit's reader skips blank lines too (json.loads fails, it moves on)
    return [
        Item(n, UNPARSED, raw) for n, raw in enumerate(chunk.lines, chunk.first) if raw and not raw.isspace()
    ]


def _first_byte(f: IO[bytes]) -> bytes:
    while True:
        chunk = f.read(1)
        if not chunk or not chunk.isspace():
            return chunk


class Chunk(NamedTuple):
    first: int  # the number of its first line
    data: bytes  # the block as read: whole-block byte scans; its first line may begin in the block before
    lines: list[bytes]  # its whole lines without their newlines, blank ones included


CHUNK = 1 << 16  # 64 KB: a block's lines and decoded records stay in the CPU caches (measured best)


def read_chunks(path: Path, size: int = CHUNK, span: tuple[int, int] | None = None) -> Iterator[Chunk]:
    """Blocks of whole JSONL lines; an unterminated last line counts. Each block read is split
    where it lies and only the line cut by its end is carried over (no copy of the block). A line
    longer than `size` makes a longer chunk. SPAN (start, stop): only those bytes of an
    uncompressed file (both at line starts, see `line_spans`), its lines numbered from 1."""
    line, pending = 1, []  # pending: the pieces of a line not yet ended
    try:
        with open_binary(path) if span is None else _Span(path, *span) as f:
            while block := f.read(size):
                lines = block.split(b"\n")
                if len(lines) == 1:
                    pending.append(block)
                    continue
                if pending:
                    pending.append(lines[0])
                    lines[0] = b"".join(pending)
                tail = lines.pop()
                pending = [tail] if tail else []
                yield Chunk(line, block, lines)
                line += len(lines)
    except READ_ERRORS as err:  # raised by the reads only: a consumer's errors never enter here
        raise unreadable(path, line + (_lines_before(path, span[0]) if span else 0), err) from None
    if pending:
        tail = b"".join(pending)
        yield Chunk(line, tail, [tail])


class _Span:
    """Bytes START to STOP of an uncompressed file, read as the whole file would be."""

    def __init__(self, path: Path, start: int, stop: int):
        self._file = require_file(path).open("rb", buffering=0)
        self._file.seek(start)
        self._left = stop - start

    def read(self, size: int) -> bytes:
        data = self._file.read(min(size, self._left)) if self._left > 0 else b""
        self._left -= len(data)
        return data

    def __enter__(self) -> _Span:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def line_spans(path: Path, parts: int) -> list[tuple[int, int]]:
    """An uncompressed file cut into at most PARTS (start, stop) byte ranges of about equal size,
    each from a line start to the next range's: cut k is the first line start at or after k/PARTS
    of the size. Fewer ranges when lines are fewer or longer than a part (none are empty)."""
    size = require_file(path).stat().st_size
    cuts = [0]
    with path.open("rb") as f:
        for k in range(1, parts):
            cuts.append(max(cuts[-1], _line_start(f, k * size // parts)))
    cuts.append(size)
    return [(a, b) for a, b in pairwise(cuts) if b > a]


def _line_start(f: IO[bytes], offset: int) -> int:
    """The first line start at or after OFFSET: past the first newline from OFFSET - 1 on; the end
    of the file when no newline follows."""
    if offset <= 0:
        return 0
    f.seek(offset - 1)
    pos = offset - 1
    while block := f.read(CHUNK):
        newline = block.find(b"\n")
        if newline >= 0:
            return pos + newline + 1
        pos += len(block)
    return pos


def _lines_before(path: Path, offset: int) -> int:
    """Newlines in the first OFFSET bytes of an uncompressed file: what a range's line numbers are
    off by (counted only when an error names a line; those read before a read error there)."""
    count = 0
    try:
        with path.open("rb") as f:
            while offset > 0 and (block := f.read(min(CHUNK * 16, offset))):
                count += block.count(b"\n")
                offset -= len(block)
    except OSError:
        pass
    return count


def _json_error(raw: bytes, err: Exception) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not UTF-8 (byte 0x{raw[bad.start]:02x} at column {bad.start + 1})"
    return f"invalid JSON: {str(err).split(':')[0]}"


_DEPTH = sys.getrecursionlimit()


def _json_array(path: Path) -> Iterator[Item]:
    """A JSON array is parsed whole (arrays cannot be streamed by line); line numbers are kept."""
    blocks: list[bytes] = []
    try:
        with open_binary(path) as f:
            while block := f.read(CHUNK):
                blocks.append(block)
    except READ_ERRORS as err:
        raise unreadable(path, 1 + sum(b.count(b"\n") for b in blocks), err) from None
    data = b"".join(blocks)
    del blocks
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line = data[: bad.start].count(b"\n") + 1
        yield Item(
            line, None, b"", f"not UTF-8 (byte 0x{data[bad.start]:02x}); the whole array is unreadable"
        )
        return
    decoder = json.JSONDecoder()
    pos, line, end = text.index("[") + 1, 1 + text.count("\n", 0, text.index("[")), len(text)
    while True:
        start = pos
        while pos < end and text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", start, pos)
        if pos >= end or text[pos] == "]":
            return
        try:
            value, stop = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            yield Item(
                line + text.count("\n", pos, err.pos), None, b"", f"invalid JSON: {err.msg}; stopped here"
            )
            return
        except RecursionError:  # Python's parser recurses once per level
            reason = f"nested too deeply for Python's JSON parser (about {_DEPTH} levels); stopped here"
            yield Item(line, None, b"", reason)
            return
        yield Item(line, value, text[pos:stop].encode())
        line += text.count("\n", pos, stop)
        pos = stop
