"""The one interface every serving engine implements: whether it can run here, what it serves, the
pre-flight checks, its exact command line, the ports it binds, how readiness is probed and how it
stops. `ernie_ops.serve.start` drives any `Backend` the same way (locks, logs, readiness, detach,
status / stop through `serve/supervisor.py`), so an engine is one module in this package.

Modules here import nothing heavy at load: the CLI lists the backends when it builds its parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ernie_ops.serve.preflight import Target
    from ernie_ops.serve.profile import ServeProfile


@dataclass(frozen=True)
class Command:
    """What to run: the argument list and what to add to the environment (secrets go there, never in
    argv, so they show in neither `ps` nor the logs)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shown(self) -> str:
        """The command for people and logs: secret values appear as ***."""
        import shlex

        env = " ".join(f"{k}={'***' if 'KEY' in k else shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + " ".join(shlex.quote(a) for a in self.argv)


class Backend:
    """One serving engine. Subclasses set the class attributes and implement `command`; the other
    methods have the behaviour every engine so far shares."""

    name: ClassVar[str]  # the `--engine` / profile `engine:` value
    title: ClassVar[str]  # how messages name it: "FastDeploy", "the embedded CPU server"
    described: ClassVar[str]  # as the fallback choice: "serving with the embedded CPU backend"
    serves: ClassVar[str]  # what it can serve, one line (shown in `serve --help`)
    priority: ClassVar[int] = 100  # the default is the available backend with the lowest priority
    default_host: ClassVar[str] = "127.0.0.1"  # the address it binds when the profile sets none
    health_path: ClassVar[str] = "/health"  # ready when GET answers 200 (and its own process listens)
    api_key_env: ClassVar[str | None] = None  # the environment variable the server reads its API key from
    port_block: ClassVar[int] = 1  # consecutive ports it binds from `port` on (the pipeline reserves them)
    stop_timeout_s: ClassVar[float] = 30.0  # SIGTERM to the whole tree, SIGKILL after this

    def unavailable(self) -> str | None:
        """Why this backend cannot run on this machine (a few words: "no GPU"), or None."""
        return None

    def available(self) -> bool:
        return self.unavailable() is None

    def ports(self, profile: ServeProfile) -> dict[str, int]:
        """Every port the server binds, by profile key, the main one first (all are locked)."""
        return {"port": profile.port}

    def resolve(self, profile: ServeProfile) -> Target:
        """The local checkpoint the profile names (a run directory resolves to its checkpoint)."""
        from ernie_ops.serve.preflight import resolve_model

        return resolve_model(profile.model, self.name)

    def preflight(self, profile: ServeProfile, target: Target) -> list[str]:
        """Refuse (UserError) what would fail after the start; returns what to tell the user."""
        from ernie_ops.serve.preflight import check_checkpoint, check_ports

        check_checkpoint(target)
        check_ports(profile, only_main=True)
        return []

    def command(
        self, profile: ServeProfile, target: Target | None = None, python: str | None = None
    ) -> Command:
        """The exact command; `target` None shows the model as the profile gives it (--print-command
        needs no local checkpoint); `python` the interpreter (default: the backend's choice for display)."""
        raise NotImplementedError

    def python_server(
        self, module: str, profile: ServeProfile, target: Target | None, python: str | None
    ) -> list[str]:
        """`python -m MODULE --model M --host H --port P`: how the engines that are Python servers
        start (the embedded one, llama-cpp-python's); the engine appends its own flags."""
        import sys

        model = str(target.model_dir) if target is not None else profile.model
        host = profile.host or self.default_host
        return [
            python or sys.executable,
            "-m",
            module,
            "--model",
            model,
            "--host",
            host,
            "--port",
            str(profile.port),
        ]

    def protected(self, env: dict[str, str]) -> bool:
        """Whether the server will require an API key, given its whole environment."""
        return self.api_key_env is not None and self.api_key_env in env

    def stop(self, state_file: Path) -> bool:
        """Stop a detached server from its record; True if something was stopped."""
        from ernie_ops.serve.supervisor import stop_server

        return stop_server(state_file, timeout=self.stop_timeout_s)
