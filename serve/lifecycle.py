"""Serving as a library: one entry point for the CLI (`ernie-ops serve`) and the pipeline alike.

`start(profile, detach=...)` picks the backend (`serve/backends/`), runs its pre-flight, builds its
command and hands it to the supervisor (port locks, logs, readiness, foreground supervision or a
detached record); `servers()` and `stop()` read those records back. Progress goes to stdout and
problems to stderr, as the supervisor's own; a caller that wants them elsewhere redirects them.
Imports nothing heavy at load (the CLI imports this to build its parser).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ernie_ops.errors import UserError
from ernie_ops.serve.backends import Backend, Command, choose, get

if TYPE_CHECKING:
    from ernie_ops.serve.profile import ServeProfile


def load(target: str | Path, sets: list[str] | tuple[str, ...] = ()) -> ServeProfile:
    """The serve profile for a profile YAML, a checkpoint directory or a run directory, with
    `key=value` overrides applied (later ones win)."""
    from ernie_ops.serve.profile import load_profile, profile_for_checkpoint

    path = Path(target)
    if path.suffix in (".yaml", ".yml"):
        return load_profile(path, list(sets))
    return profile_for_checkpoint(str(target), list(sets))


def select(profile: ServeProfile, backend: str | None = None) -> tuple[Backend, str | None]:
    """Fix the profile's backend (`backend`, else the profile's, else the best one available here)
    and its host (else the backend's default); returns it and, when it was chosen for the user, why."""
    chosen, reason = choose(backend or profile.backend)
    profile.backend = chosen.name
    profile.host = profile.host or chosen.default_host
    return chosen, reason


def command(profile: ServeProfile) -> Command:
    """The command `start` would run, for people (`--print-command`): no local checkpoint needed."""
    backend, _ = select(profile)
    return backend.command(profile)


def start(profile: ServeProfile, *, detach: bool = False, backend: str | None = None) -> int:
    """Pre-flight, then the server supervised: until it stops (foreground) or once it is ready
    (`detach`, recorded for `servers` / `stop`). Raises UserError for what pre-flight refuses;
    returns the supervisor's status: 0 ready / stopped cleanly, 1 failed, 130 Ctrl-C, 128+N signal N."""
    import datetime as dt
    import os

    from ernie_ops.serve.preflight import LOG_DIR, exposure_warning, state_dir
    from ernie_ops.serve.supervisor import run_server

    chosen, reason = select(profile, backend)
    if reason:
        print(reason)
    target = chosen.resolve(profile)
    for line in chosen.preflight(profile, target):
        print(line)
    launch = chosen.command(profile, target, python=sys.executable)
    print(f"command: {launch.shown()}")
    env = {**os.environ, **launch.env}
    warning = exposure_warning(profile.host, profile.port, protected=chosen.protected(env))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = (target.run_dir / "logs" if target.run_dir else LOG_DIR) / f"serve-{profile.port}-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    return run_server(
        launch.argv,
        {**env, "FD_LOG_DIR": str(log_dir)},
        log_dir,
        profile.host,
        profile.port,
        profile.startup_timeout,
        detach,
        state_dir() / f"{profile.port}.json",
        ports=chosen.ports(profile).values(),
        view=LOG_DIR / f"{profile.port}.json",
        health_path=chosen.health_path,
        record={"backend": chosen.name},
    )


def servers(port: int | None = None, host: str | None = None) -> list[dict[str, Any]]:
    """Every server ernie-ops started on this machine for this user (detached ones from their
    records, foreground ones from their port locks), by port; filtered by `port` / `host`."""
    from ernie_ops.serve.preflight import state_dir
    from ernie_ops.serve.supervisor import list_servers

    return [
        s
        for s in list_servers(state_dir())
        if (port is None or s["port"] == port) and (host is None or s.get("host") == host)
    ]


@dataclass(frozen=True)
class Stopped:
    """What `stop` did to one server: `outcome` stopped (it ran), stale (its process had exited: the
    record was removed, `stopped` says whether workers it left were) or foreground (not ours to stop:
    it belongs to the terminal that runs it)."""

    port: int
    pid: int | None
    outcome: str
    stopped: bool


def stop(port: int | None = None, host: str | None = None) -> list[Stopped]:
    """Stop every detached server that matches (all of them without `port` / `host`), each through
    its own backend; foreground servers are reported, not stopped."""
    from ernie_ops.serve.backends.base import Backend as Generic

    done = []
    for server in servers(port, host):
        pid = server.get("pid")
        if server["state"] == "foreground":
            done.append(Stopped(server["port"], pid, "foreground", False))
            continue
        try:
            backend = get(server.get("backend") or "fastdeploy")
        except UserError:  # a record of a backend this version does not have: stop it generically
            backend = Generic()
        stopped = backend.stop(Path(server["state_file"]))
        outcome = "stale" if server["state"] == "stale" else "stopped"
        done.append(Stopped(server["port"], pid, outcome, stopped))
    return done
