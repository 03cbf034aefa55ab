"""The gateway's request log: one JSON line per request, rotated by size and by day, kept for a
retention period.

Each line holds what explains an answer later without its content: time, request id, route, mode,
which backend answered (model name as the backend reported it), status, latency figures (TTFT,
E2E in ms), finish reason, tool call names, token counts, a retry on stable, and for shadow copies
the candidate's figures and the comparison with the stable answer.

Content (the request's messages or prompt, the answer) is written only with `content=True`
(`ernie-ops gateway run --log-content`), and then always through the toolkit's PII masker
(`ernie_ops.privacy.masker.default_masker`, one placeholder numbering per line: `<EMAIL_1>` in the
request and the answer is the same address), unless the gateway runs with `--no-mask`: then each
content line says `"masked": false`. Masking runs on the gateway's event loop as each
line is queued: content logging costs CPU per request, the figures-only log almost none.

The active file is `requests.jsonl`; at a new UTC day or past `max_bytes` it is renamed
`requests-YYYYMMDD-HHMMSS.jsonl` (the time it was started) and files older than the retention
period are deleted. Lines are buffered and written by `flush()` (the gateway calls it every second
and at shutdown), so the request path never waits for the disk.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

from ernie_ops.files import delete_older

ACTIVE = "requests.jsonl"
CONTENT_FIELDS = ("request", "answer")


def _day(t: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(t))


class RequestLog:
    def __init__(
        self,
        directory: Path,
        max_bytes: int = 100 * 2**20,
        retention_days: float = 30.0,
        content: bool = False,
        mask: bool = True,
        clock: Callable[[], float] = time.time,
    ):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.retention_s = retention_days * 86400
        self.content = content  # whether prompts and answers are logged
        self.mask = mask  # masked unless the gateway was told not to
        self._masker: Any = None
        if content and mask:
            from ernie_ops.privacy.masker import default_masker

            self._masker = default_masker()
        self.clock = clock
        self._pending: list[bytes] = []
        self._file: IO[bytes] | None = None
        self._started = 0.0  # when the active file was begun
        self._size = 0
        self.written = 0  # lines written, for tests and the shutdown message

    def add(self, record: dict[str, Any]) -> None:
        """Queue one line (written at the next flush); its content fields masked, or dropped when
        content is not logged."""
        if any(f in record for f in CONTENT_FIELDS):
            if not self.content:
                record = {k: v for k, v in record.items() if k not in CONTENT_FIELDS}
            elif self._masker is None:
                record = {**record, "masked": False}
            else:
                from ernie_ops.privacy.masker import mask_fields

                record = mask_fields(record, CONTENT_FIELDS, self._masker)
        self._pending.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        now = self.clock()
        f = self._open(now)
        if _day(self._started) != _day(now) or self._size >= self.max_bytes:
            f = self._rotate(now)
        data = b"".join(lines)
        f.write(data)
        f.flush()
        self._size += len(data)
        self.written += len(lines)

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self, now: float) -> IO[bytes]:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / ACTIVE
            try:
                st = path.stat()
                # a file left by an earlier gateway: its day is the day it was last written
                self._started, self._size = st.st_mtime, st.st_size
            except FileNotFoundError:
                self._started, self._size = now, 0
            self._file = open(path, "ab")  # noqa: SIM115 (kept open between flushes)
            self.prune(now)
        return self._file

    def _rotate(self, now: float) -> IO[bytes]:
        assert self._file is not None
        self._file.close()
        self._file = None
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self._started))
        target = self.directory / f"requests-{stamp}.jsonl"
        n = 1
        while target.exists():
            n += 1
            target = self.directory / f"requests-{stamp}-{n}.jsonl"
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.directory / ACTIVE, target)
        f = self._open(now)
        self._started, self._size = now, 0
        return f

    def prune(self, now: float | None = None) -> list[Path]:
        """Delete rotated files last written before the retention period; the deleted paths."""
        return delete_older(
            self.directory, "requests-*.jsonl", (self.clock() if now is None else now) - self.retention_s
        )

    def files(self) -> list[Path]:
        """Every log file, oldest first (rotated ones, then the active one)."""
        rotated = sorted(self.directory.glob("requests-*.jsonl"))
        active = self.directory / ACTIVE
        return rotated + ([active] if active.exists() else [])
