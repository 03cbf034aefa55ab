"""Retention: delete what the toolkit wrote once it is older than the retention period.

`ernie-ops gc --older-than 30d` looks at the directories that hold user content (`runs/` by
default). Each entry of such a directory is one unit (a training run, a pipeline, an eval, smoke or
bench output, a report file), except the containers that group units (`runs/bench/`, `runs/lint/`,
`runs/serve/`, `runs/gateway/requests/`, `runs/gateway/review/`...), whose entries are the units.
A unit's age is that of the newest file in it, so a run written to yesterday is a day old whatever
its start.

A unit is never deleted while it is in use: a `run.lock` in it held by a live training (checked
with the lock itself, and taken by gc for the moment of the deletion, so a `train --resume` cannot
start in between), any file in it open in a live process (a server's log), or a pipeline whose
record says a stage is running. A unit goes atomically: renamed to a hidden `.gc-*` name in the same
directory (one rename: readers see it whole or gone), then removed; a removal cut short is finished
by the next gc. Symlinks are removed, never followed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ernie_ops.errors import UserError

RETENTION_ENV = "ERNIE_OPS_RETENTION"
# directories of units rather than units (relative to a root), and the names in them never removed
CONTAINERS = (
    "bench",
    "lint",
    "serve",
    "smoke",
    "eval",
    "compare",
    "gateway/requests",
    "gateway/review",
    "gc",
)
KEEP = {
    "gateway": None,  # routing state; only its requests/ log and review/ queue are user content
    "rollouts": None,  # controller state
}
ACTIVE_NAMES = {"requests.jsonl"}  # files something appends to now (the gateway's active log)
TRASH = ".gc-"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """Seconds in '30d', '12h', '90m', '2w', '45s' (a bare number is days)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise UserError(f"not a duration: {text!r}", hint="e.g. 30d, 12h, 2w")
    return float(m.group(1)) * _UNITS[m.group(2) or "d"]


@dataclass
class Unit:
    path: Path
    age: float  # seconds since its newest file was written
    size: int
    why_kept: str | None = None  # None: deleted (or would be, on a dry run)


@dataclass
class GcResult:
    older_than: float
    dry_run: bool
    deleted: list[Unit] = field(default_factory=list)
    kept: list[Unit] = field(default_factory=list)  # old enough, but in use
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        def row(u: Unit) -> dict:
            return {
                "path": str(u.path),
                "age_days": round(u.age / 86400, 2),
                "bytes": u.size,
                "kept": u.why_kept,
            }

        return {
            "older_than_days": round(self.older_than / 86400, 3),
            "dry_run": self.dry_run,
            "deleted": [row(u) for u in self.deleted],
            "kept": [row(u) for u in self.kept],
            "errors": self.errors,
        }


def units(root: Path) -> Iterator[Path]:
    """The units under ROOT (see the module doc), never following symlinks."""
    containers = {root / c for c in CONTAINERS}
    kept = {root / k for k in KEEP}  # state, not content: only the containers inside are looked at
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            holds_container = any(c.is_relative_to(path) and c != path for c in containers)
            if entry.name.startswith(TRASH):
                yield path  # left by a gc cut short: finish it
            elif not entry.is_dir(follow_symlinks=False) and entry.name in ACTIVE_NAMES:
                continue
            elif path in containers or (holds_container and entry.is_dir(follow_symlinks=False)):
                stack.append(path)
            elif path in kept or directory in kept:
                continue
            else:
                yield path


def _walk(path: Path) -> Iterator[tuple[Path, os.stat_result]]:
    st = os.lstat(path)
    yield path, st
    if stat.S_ISDIR(st.st_mode):
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    yield p, os.lstat(p)


def open_files() -> set[tuple[int, int]]:
    """(device, inode) of every file a live process has open (all we can see in /proc)."""
    found: set[tuple[int, int]] = set()
    with contextlib.suppress(OSError):
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            fd_dir = f"/proc/{pid}/fd"
            with contextlib.suppress(OSError):
                for fd in os.listdir(fd_dir):
                    with contextlib.suppress(OSError):
                        st = os.stat(f"{fd_dir}/{fd}")
                        found.add((st.st_dev, st.st_ino))
    return found


def _pipeline_running(path: Path) -> bool:
    record = path / "pipeline.json"
    if not record.is_file():
        return False
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    stages = data.get("stages") if isinstance(data, dict) else None
    return isinstance(stages, dict) and any(
        isinstance(s, dict) and s.get("status") == "running" for s in stages.values()
    )


def collect(
    roots: list[Path], older_than: float, dry_run: bool = False, now: float | None = None
) -> GcResult:
    from ernie_ops.proc import Lock

    now = time.time() if now is None else now
    result = GcResult(older_than, dry_run)
    busy = open_files()
    for root in roots:
        if not root.exists():
            continue
        if not root.is_dir() or root.is_symlink():
            raise UserError(f"{root} is not a directory", hint="name the directory that holds runs")
        for path in units(root):
            try:
                files = list(_walk(path))
            except FileNotFoundError:
                continue
            newest = max(st.st_mtime for _, st in files)
            unit = Unit(path, now - newest, sum(st.st_size for _, st in files if stat.S_ISREG(st.st_mode)))
            if unit.age < older_than and not path.name.startswith(TRASH):
                continue
            locks = [p for p, st in files if p.name == "run.lock" and stat.S_ISREG(st.st_mode)]
            if any((st.st_dev, st.st_ino) in busy for _, st in files):
                unit.why_kept = "a file in it is open in a live process"
            elif _pipeline_running(path) and unit.age < 7 * 86400:
                unit.why_kept = "its pipeline record says a stage is running"
            elif any(Lock.holder(lock) for lock in locks):
                unit.why_kept = "a live training holds its run.lock"
            if unit.why_kept:
                result.kept.append(unit)
                continue
            if dry_run:
                result.deleted.append(unit)
                continue
            try:
                _delete(path, locks)
            except _InUse as err:
                unit.why_kept = str(err)
                result.kept.append(unit)
            except OSError as err:
                result.errors.append(f"{path}: {err.strerror or err}")
            else:
                result.deleted.append(unit)
    return result


class _InUse(Exception):
    pass


def _delete(path: Path, locks: list[Path]) -> None:
    """Hold every run.lock in PATH (a training starting now fails to take it), rename PATH out of
    sight in one step, then remove it."""
    from ernie_ops.proc import Lock

    held: list[Lock] = []
    try:
        for lock_path in locks:
            lock = Lock(lock_path)
            if not lock.acquire("ernie-ops gc"):
                raise _InUse("a training took its run.lock just now")
            held.append(lock)
        if path.name.startswith(TRASH):
            trash = path
        else:
            trash = path.with_name(f"{TRASH}{path.name}.{os.getpid()}")
            os.rename(path, trash)
    finally:
        for lock in held:
            lock.release()
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash)
    else:
        trash.unlink()


def default_retention() -> float | None:
    value = os.environ.get(RETENTION_ENV)
    return parse_age(value) if value else None
