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

The retention period may differ by kind of unit. `retention.yaml` (in the current directory, or
named by ERNIE_OPS_RETENTION_CONFIG or `gc --config`) gives one per kind; a kind it does not name
takes `default`, and with no default is kept:

    default: 30d          # 30d, 12h, 2w, 90m; a bare number is days
    runs: 90d             # training runs (a directory with run.json)
    pipelines: 30d        # pipelines (pipeline.json)
    eval: 30d             # eval and compare outputs (runs/eval/, runs/compare/)
    smoke: 14d
    bench: 180d
    lint: 14d
    serve: 14d            # server logs (runs/serve/)
    gateway_log: 14d      # the gateway's rotated request logs (runs/gateway/requests/)
    review_queue: 7d      # the gateway's review queue items (runs/gateway/review/)
    dirs: [runs]          # where gc looks when given no directory

`gc --older-than AGE` is one period for every kind and overrides the file; ERNIE_OPS_RETENTION is
the period when neither is given. `policy_for` decides, `collect` applies it; the gateway takes
its request log's and review queue's period from `period_for("gateway_log")`/`("review_queue")`.
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
    policy: Policy | None = None  # the periods by kind, when they differ

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
            "periods_days": self.policy.days() if self.policy else None,
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
    roots: list[Path], older_than: float | Policy, dry_run: bool = False, now: float | None = None
) -> GcResult:
    """Delete the units under ROOTS older than their retention period: OLDER_THAN seconds for
    all, or a Policy's period for each unit's kind (a kind without one is kept)."""
    from ernie_ops.proc import Lock

    now = time.time() if now is None else now
    policy: Policy | None = None
    if isinstance(older_than, Policy):
        policy = older_than
        result = GcResult(policy.shortest(), dry_run, policy=policy)
    else:
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
            period = policy.of(path, root) if policy is not None else result.older_than
            trash = path.name.startswith(TRASH)
            if not trash and (period is None or unit.age < period):
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


# -- retention by kind (retention.yaml) -----------------------------------------------------------

CONFIG_ENV = "ERNIE_OPS_RETENTION_CONFIG"
CONFIG_NAME = "retention.yaml"
# the kind of the units in each container (kinds not listed here: runs, pipelines, default)
CONTAINER_KINDS = {
    "bench": "bench",
    "lint": "lint",
    "serve": "serve",
    "smoke": "smoke",
    "eval": "eval",
    "compare": "eval",
    "gateway/requests": "gateway_log",
    "gateway/review": "review_queue",
}
KINDS = ("runs", "pipelines", "eval", "smoke", "bench", "lint", "serve", "gateway_log", "review_queue")

Age = str | float | None  # 30d, 12h, ...; a number is days


@dataclass(frozen=True)
class RetentionFile:
    """retention.yaml, as written (see the module doc)."""

    default: Age = None
    runs: Age = None
    pipelines: Age = None
    eval: Age = None
    smoke: Age = None
    bench: Age = None
    lint: Age = None
    serve: Age = None
    gateway_log: Age = None
    review_queue: Age = None
    dirs: list[str] | None = None


@dataclass(frozen=True)
class Policy:
    """Retention periods in seconds by kind of unit; `default` for the kinds not named (None: kept)."""

    periods: dict[str, float] = field(default_factory=dict)
    default: float | None = None
    dirs: tuple[Path, ...] = ()  # where gc looks when given no directory (empty: runs)
    source: str = ""  # where the periods come from, for messages

    def period(self, kind: str) -> float | None:
        return self.periods.get(kind, self.default)

    def of(self, unit: Path, root: Path) -> float | None:
        return self.period(kind_of(unit, root))

    def shortest(self) -> float:
        known = [p for p in (*self.periods.values(), self.default) if p is not None]
        return min(known) if known else float("inf")

    def days(self) -> dict[str, float | None]:
        periods = {k: self.period(k) for k in KINDS} | {"default": self.default}
        return {k: None if v is None else round(v / 86400, 3) for k, v in periods.items()}


def kind_of(unit: Path, root: Path) -> str:
    """The kind of a unit `units(root)` yields: its container's, else a training run (run.json), a
    pipeline (pipeline.json), or `default`."""
    try:
        parent = unit.parent.relative_to(root).as_posix()
    except ValueError:
        parent = ""
    if parent in CONTAINER_KINDS:
        return CONTAINER_KINDS[parent]
    if unit.is_dir() and not unit.is_symlink():
        if (unit / "run.json").is_file():
            return "runs"
        if (unit / "pipeline.json").is_file():
            return "pipelines"
    return "default"


def load_policy(path: Path) -> Policy:
    """The periods in a retention file, or one UserError listing every problem (`file:line: ...`)."""
    from ernie_ops.recipe.problems import error
    from ernie_ops.spec import check_fields, load_yaml, raise_problems

    loaded, problems = load_yaml(Path(path))
    policy = None
    if loaded is not None:
        clean, more = check_fields(RetentionFile, loaded.values, loaded.where, "retention")
        problems += more
        periods: dict[str, float] = {}
        for key, value in clean.items():
            if key == "dirs" or value is None:
                continue
            try:
                periods[key] = parse_age(str(value))
            except UserError:
                problems.append(
                    error(loaded.where(key), key, f"not a duration: {value!r}", "e.g. 30d, 12h, 2w")
                )
        default = periods.pop("default", None)
        dirs = tuple(Path(d).expanduser() for d in clean.get("dirs") or ())
        if not periods and default is None and not problems:
            problems.append(
                error(
                    loaded.where(),
                    None,
                    "no retention period in it",
                    f"e.g. default: 30d (kinds: {', '.join(KINDS)})",
                )
            )
        policy = Policy(periods, default, dirs, str(path))
    problems.sort(key=lambda p: _line(p.where))
    raise_problems(
        f"the retention file {path} has problems",
        problems,
        hint="the format: python -m pydoc ernie_ops.privacy.retention",
    )
    assert policy is not None
    return policy


def _line(where: str) -> int:
    tail = where.rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


def config_path(config: Path | None = None) -> Path | None:
    """The retention file to read: CONFIG, else ERNIE_OPS_RETENTION_CONFIG, else ./retention.yaml
    when there is one."""
    if config is not None:
        return Path(config)
    named = os.environ.get(CONFIG_ENV)
    if named:
        return Path(named)
    local = Path(CONFIG_NAME)
    return local if local.is_file() else None


def policy_for(older_than: str | None = None, config: Path | None = None) -> Policy:
    """What `ernie-ops gc` honours: `--older-than AGE` (one period for every kind) over a retention
    file (`--config`, ERNIE_OPS_RETENTION_CONFIG, ./retention.yaml) over ERNIE_OPS_RETENTION."""
    if older_than is not None and config is not None:
        raise UserError("give --older-than or --config, not both", hint="--older-than is one period for all")
    if older_than is not None:
        return Policy(default=parse_age(older_than), source=f"--older-than {older_than}")
    path = config_path(config)
    if path is not None:
        return load_policy(path)
    env = default_retention()
    if env is not None:
        return Policy(default=env, source=RETENTION_ENV)
    raise UserError(
        "no retention period",
        hint=f"give --older-than (e.g. 30d), write {CONFIG_NAME} (`default: 30d`) or set {RETENTION_ENV}",
    )


def period_for(kind: str, config: Path | None = None) -> float | None:
    """The retention period of KIND (e.g. `gateway_log`, `review_queue`) in seconds from the
    retention file or ERNIE_OPS_RETENTION, or None when neither gives one."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    path = config_path(config)
    if path is not None:
        return load_policy(path).period(kind)
    return default_retention()
