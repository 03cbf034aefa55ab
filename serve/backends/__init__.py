"""The serving backends, by name. Every module of this package except `base` defines one engine as
`BACKEND` (a `base.Backend`); the registry finds them, so a new engine is one new module (plus its
data, such as a flag table) and nothing in the CLI, which lists `names()` for `--engine` (a
profile's `engine:`; the class stays `Backend`)."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from ernie_ops.errors import UserError, did_you_mean
from ernie_ops.serve.backends.base import Backend, Command

__all__ = ["Backend", "Command", "all_backends", "choose", "get", "names"]


@cache
def all_backends() -> tuple[Backend, ...]:
    """Every backend, the default-preferred first."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        backend = getattr(module, "BACKEND", None)
        if isinstance(backend, Backend):
            found.append(backend)
    return tuple(sorted(found, key=lambda b: (b.priority, b.name)))


def names() -> tuple[str, ...]:
    return tuple(b.name for b in all_backends())


def get(name: str) -> Backend:
    for backend in all_backends():
        if backend.name == name:
            return backend
    close = did_you_mean(name, names())
    raise UserError(
        f"engine {name!r} is not one ernie-ops has" + (f"; did you mean {close!r}?" if close else ""),
        hint=f"one of: {', '.join(names())}",
    )


def choose(requested: str | None) -> tuple[Backend, str | None]:
    """The backend to use, and the one-line reason when it was chosen for the user: the requested
    one, else the most preferred that can run here."""
    if requested:
        return get(requested), None
    preferred, *others = all_backends()
    why = preferred.unavailable()
    if why is None:
        return preferred, None
    fallback = next((b for b in others if b.available()), others[-1] if others else preferred)
    return fallback, f"{why} here: serving with {fallback.described} (engine: {fallback.name})"
