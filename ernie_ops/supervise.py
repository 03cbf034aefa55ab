"""Supervising the processes train and serve start: one way to start them, log them, stop them and
say why they failed.

- `start`: the child runs in a new session (its own process group, so one signal reaches every
  worker it forks, and Ctrl-C in the terminal reaches only us), dies with us when asked
  (`ernie_ops.proc.die_with_parent`) and inherits the lock descriptors it must hold.
- `Pump`: a thread that copies the child's output to a log. A log that cannot be written (a full
  disk) never blocks the child: the pump keeps draining the pipe, remembers the first failure and
  hands it to the caller, who decides (train stops the run and marks it failed).
- `stop_tree`: SIGTERM to the process group and to every descendant, also those that left the
  group (a worker that called setsid), then SIGKILL after a grace period. Processes are held as
  `psutil.Process` objects, which refuse to signal a pid that was reused by another process; a
  recorded leader is recognised by its start time (`created`).
- Diagnosis: log text cleaned of colours and `\\r` progress bars, the last exception line, and a
  known-failure table matched against the text. The tables stay with their owners (ERNIEKit's and
  FastDeploy's failures are different data); the mechanism is this one.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from ernie_ops.proc import die_with_parent
from ernie_ops.text import strip_ansi

STOP_GRACE_S = 10.0
KILL_WAIT_S = 5.0  # after SIGKILL: how long to wait for the kernel to take the processes down
POLL_S = 0.05
TAIL_BYTES = 64 * 1024
# The line an exception ends a traceback with (Python's, Paddle's `...NotMet`, `NotFound`).
EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+(?:Error|Exception|NotMet)|[\w.]*NotFound|SystemExit)\b[:(]")
_SAME_START_S = 0.02  # start times are clock ticks (1/100 s): closer than this is the same process

# ---------------------------------------------------------------------------------------------
# starting


@dataclass
class Child:
    """A process we started, with its start time: what tells it from a later process with its pid."""

    process: subprocess.Popen
    created: float | None

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, grace: float = STOP_GRACE_S) -> bool:
        """Stop its whole tree (see `stop_tree`) and collect its exit status."""
        stopped = stop_tree(self.pid, self.pid, grace, created=self.created, reap=self.process.poll)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=KILL_WAIT_S)
        return stopped


def start(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    stdout: Any = subprocess.PIPE,
    text: bool = False,
    death_signal: int | None = signal.SIGKILL,
    pass_fds: Iterable[int] = (),
) -> Child:
    """Start COMMAND in a new session, stderr merged into STDOUT (a pipe, a file or None), stdin
    closed. With DEATH_SIGNAL the child receives it when this process dies, SIGKILL included (SIGTERM
    for a launcher that must take its workers down itself; None for a server left running on
    purpose). PASS_FDS (lock descriptors) are inherited: the locks last as long as the child."""
    process: subprocess.Popen = subprocess.Popen(
        list(command),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent(death_signal) if death_signal is not None else None,
        pass_fds=tuple(pass_fds),
        text=text,
        errors="replace" if text else None,
    )
    # unreaped, the child keeps its pid: this start time is its own even if it has exited already
    return Child(process, created_at(process.pid))


# ---------------------------------------------------------------------------------------------
# the log pump


class Pump:
    """Copies a child's text output to LOG line by line and hands each line on (to LINES, then None
    at the end of the output). TRANSFORM, when given, rewrites each line before it is written (a
    masker: ERNIEKit logs the examples it skips, personal data included); the line handed on is
    the child's own.

    A write that fails (ENOSPC on a full disk) is remembered in `failure`, put once on LINES, and
    the log is written no more, but the pipe is still drained: a child blocked on a full pipe would
    hang instead of being stopped. The caller decides what a lost log means."""

    def __init__(
        self,
        stream: IO[str],
        log: IO[str],
        lines: queue.Queue | None = None,
        transform: Callable[[str], str] | None = None,
    ):
        self.stream, self.log, self.lines, self.transform = stream, log, lines, transform
        self.failure: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="log-pump", daemon=True)

    def start(self) -> Pump:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            for line in self.stream:
                self._write(line)
                if self.lines is not None:
                    self.lines.put(line)
        except (OSError, ValueError):  # the pipe was closed under us: nobody listens any more
            pass
        if self.lines is not None:
            self.lines.put(None)

    def _write(self, line: str) -> None:
        if self.failure is not None:
            return
        if self.transform is not None:
            try:
                line = self.transform(line)
            except Exception as err:  # neither stop draining nor write the line unmasked
                line = f"[ernie-ops: line withheld, masking it failed: {type(err).__name__}]\n"
        try:
            self.log.write(line)
            self.log.flush()
        except ValueError:  # the log was closed: the supervision is over
            self.failure = OSError("the log was closed")
        except OSError as err:
            err.filename = err.filename or getattr(self.log, "name", None)  # a failed write names no file
            self.failure = err
            if self.lines is not None:
                self.lines.put(err)


def close_log(log: IO[str]) -> None:
    """Close a log whose last flush may fail (a full disk): the run is over either way."""
    with contextlib.suppress(OSError):
        log.close()


# ---------------------------------------------------------------------------------------------
# processes


def created_at(pid: int) -> float | None:
    """When PID started (psutil's create_time); None when there is no such process."""
    if pid <= 0:
        return None
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def from_ticks(ticks: int) -> float:
    """A start time recorded as clock ticks since boot (field 22 of /proc/PID/stat) as a create_time."""
    return ticks / os.sysconf("SC_CLK_TCK") + psutil.boot_time()


def _same_start(a: float, b: float) -> bool:
    return abs(a - b) < _SAME_START_S


def process(pid: int, created: float | None = None) -> psutil.Process | None:
    """The live process PID (a zombie has exited), if it is the one that started at CREATED."""
    if pid <= 0:  # never let 0 / -1 reach kill(): they mean "my group" / "every process"
        return None
    try:
        proc = psutil.Process(pid)
        if created is not None and not _same_start(proc.create_time(), created):
            return None  # the pid was reused by a later process
        return proc if proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def alive(pid: int, created: float | None = None) -> bool:
    """PID runs and (given CREATED) is the process that started then, not a later one with its pid."""
    return process(pid, created) is not None


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group(pgid: int) -> list[psutil.Process]:
    """The live members of process group PGID."""
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (OSError, psutil.Error):
            continue
    return out


def group_is_ours(pid: int, pgid: int, created: float | None) -> bool:
    """Whether process group PGID is still the one our process PID (started at CREATED) led or
    joined. Linux gives no new process a pid that is still a group's id, so members without a leader
    are ours; a live leader that is not our process is a later group that reused the number."""
    if pgid <= 1 or pgid == os.getpgrp():  # never our own group (the CLI and its shell)
        return False
    leader = process(pgid)
    if leader is None:
        return True
    try:
        return pgid == pid and (created is None or _same_start(leader.create_time(), created))
    except psutil.Error:  # it ended just now: members without a leader
        return True


def tree(pid: int, pgid: int | None = None, created: float | None = None) -> dict[int, psutil.Process]:
    """The live processes of a child's tree: its process group (when still ours), the child itself
    (when it is still the process that started at CREATED) and every descendant of either, including
    workers that left the group. Never this process."""
    pgid = pid if pgid is None else pgid
    found: dict[int, psutil.Process] = {}
    leader = process(pid, created)
    if leader is not None:
        found[pid] = leader
    if group_is_ours(pid, pgid, created):
        found.update((p.pid, p) for p in _group(pgid))
    for root in list(found.values()):
        with contextlib.suppress(psutil.Error):
            for child in root.children(recursive=True):
                found.setdefault(child.pid, child)
    found.pop(os.getpid(), None)
    return {p: proc for p, proc in found.items() if _live(proc)}


def stop_tree(
    pid: int,
    pgid: int | None = None,
    grace: float = STOP_GRACE_S,
    *,
    created: float | None = None,
    reap: Callable[[], object] | None = None,
) -> bool:
    """SIGTERM a child's tree (`tree`: its group and every descendant, those that escaped the group
    too), wait GRACE seconds, then SIGKILL what is left; returns whether anything was running.

    REAP collects the child's exit status when it is ours (a Popen's `poll`), else it would stay a
    zombie and its group would never empty. Processes that appear while stopping are found again."""
    pgid = pid if pgid is None else pgid
    reap = reap or (lambda: _reap(pid))
    reap()
    targets = tree(pid, pgid, created)
    if not targets:
        return False
    _signal(pid, pgid, created, targets, signal.SIGTERM)
    if _wait_gone(pid, pgid, created, targets, grace, reap):
        return True
    targets.update(tree(pid, pgid, created))  # workers started while stopping
    _signal(pid, pgid, created, targets, signal.SIGKILL)
    _wait_gone(pid, pgid, created, targets, KILL_WAIT_S, reap)
    return True


def _signal(pid: int, pgid: int, created: float | None, targets: dict[int, psutil.Process], sig: int) -> None:
    if group_is_ours(pid, pgid, created):  # the whole group at once: workers forked just now too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for proc in targets.values():
        with contextlib.suppress(psutil.Error):  # psutil refuses a pid reused since it was found
            proc.send_signal(sig)


def _wait_gone(
    pid: int,
    pgid: int,
    created: float | None,
    targets: dict[int, psutil.Process],
    timeout: float,
    reap: Callable[[], object],
) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        reap()
        if not any(_live(p) for p in targets.values()) and not tree(pid, pgid, created):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def _reap(pid: int) -> None:
    if pid <= 0:  # waitpid(-1) would collect any child of ours, not this one
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def exit_text(code: int) -> str:
    """`exited with status N` or `was killed by SIGNAME` for a Popen return code."""
    return f"was killed by {signal_name(-code)}" if code < 0 else f"exited with status {code}"


# ---------------------------------------------------------------------------------------------
# diagnosis from the log


@dataclass(frozen=True)
class Known:
    """One known failure: how it shows in the logs, what it means, the fix."""

    pattern: re.Pattern[str]
    cause: str
    fix: str


def clean_lines(text: str) -> list[str]:
    """Log text as a person reads it: colours removed, and of a line a progress bar rewrote with
    `\\r` only its last state; empty lines dropped."""
    out = []
    for raw in text.split("\n"):
        parts = [p for p in strip_ansi(raw).split("\r") if p.strip()]
        if parts:
            out.append(parts[-1].rstrip())
    return out


def read_tail(path: Path, start: int = 0, limit: int | None = None, max_bytes: int = TAIL_BYTES) -> list[str]:
    """The cleaned lines of PATH written since offset START (all of it when the file shrank since),
    the last MAX_BYTES at most, the last LIMIT lines when given; [] when it cannot be read."""
    try:
        with Path(path).open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            begin = 0 if start > size else start  # truncated since: all of it is new
            f.seek(max(begin, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    lines = clean_lines(data.decode("utf-8", "replace"))
    return lines[-limit:] if limit else lines


def last_exception(lines: Iterable[str], width: int = 400) -> str | None:
    """The last line that ends a traceback (`ValueError: ...`): usually the best single hint."""
    found = None
    for line in lines:
        if EXCEPTION_LINE.match(line):
            found = line.strip()[:width]
    return found


def match_known(text: str, table: Iterable[Known]) -> tuple[Known, re.Match[str]] | None:
    """The first entry of TABLE (most specific first) whose pattern occurs in TEXT."""
    text = strip_ansi(text)
    for known in table:
        match = known.pattern.search(text)
        if match:
            return known, match
    return None
