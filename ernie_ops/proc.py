"""Processes the toolkit starts and owns: children that die with their parent, and ownership
locks that the kernel releases when the owner dies (so a lock is never stale)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn` that makes the child receive SIG when the process that started it dies, even
    by SIGKILL (Linux PR_SET_PDEATHSIG). The child's own children are not covered: give it SIGTERM
    when it must take them down itself (paddle.distributed.launch does)."""
    parent = os.getpid()

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


@dataclass(frozen=True)
class Owner:
    """Who holds a lock: enough to tell a person which process to look at."""

    pid: int
    host: str
    started: float  # time.time() when the lock was taken
    command: str

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, since {since}: {self.command}"


class Lock:
    """An exclusive `flock` on PATH; the file holds the owner (pid, host, start, command).

    The kernel drops the lock when every process holding its descriptor has exited, SIGKILL
    included, so there is no stale-lock cleanup. Pass `fd` to a child (`pass_fds`) and the lock is
    held for as long as the child lives too."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, command: str = "") -> bool:
        """Take the lock without waiting; False when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        owner = Owner(os.getpid(), socket.gethostname(), time.time(), command or " ".join(sys.argv))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner.__dict__).encode() + b"\n", 0)
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)  # the file stays (unlinking a flock file races a new owner)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @staticmethod
    def holder(path: Path) -> Owner | None:
        """The owner of a lock that is held now; None when nobody holds it (also when its last
        owner died without releasing it: the kernel released it)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return Lock.last_owner(path) or Owner(0, "?", 0.0, "?")
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @staticmethod
    def last_owner(path: Path) -> Owner | None:
        """Whoever wrote the lock file last (alive or not)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8") or "null")
            return Owner(**data) if isinstance(data, dict) else None
        except (OSError, ValueError, TypeError):
            return None
