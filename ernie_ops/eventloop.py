"""The event loop of the toolkit's timing-sensitive processes (the load generator, the null server,
the gateway): uvloop when it is installed, else asyncio's own.

Why: on a shared machine what spoils an open loop's arrivals and a proxy's p99 is time the process
spends not running or busy with other requests when a request is due. uvloop (libuv) costs less CPU
per request and per loop iteration than asyncio's pure-Python selector loop, so the process holds
the CPU for less time, is less often behind, and wakes sooner (scripts/bench_loadgen.py and
scripts/bench_gateway.py measure both loops interleaved). Everything runs on either loop: uvloop is
optional, and `ERNIE_OPS_EVENT_LOOP=asyncio` forces the standard one (`uvloop` demands uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from ernie_ops.errors import UserError

ENV = "ERNIE_OPS_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")

T = TypeVar("T")


def chosen(kind: str | None = None) -> str:
    """The loop to use: `kind` (auto / uvloop / asyncio), else the environment's, else auto: uvloop
    when it imports, else asyncio."""
    kind = (kind or os.environ.get(ENV) or "auto").strip().lower()
    if kind not in CHOICES:
        raise UserError(f"{ENV}={kind!r}: expected one of {', '.join(CHOICES)}")
    if kind == "asyncio":
        return "asyncio"
    try:
        importlib.import_module("uvloop")
    except ImportError:
        if kind == "uvloop":
            raise UserError(
                f"{ENV}=uvloop but uvloop is not installed", hint="pip install uvloop, or leave it unset"
            ) from None
        return "asyncio"
    return "uvloop"


def new_loop(kind: str | None = None) -> asyncio.AbstractEventLoop:
    """A new event loop of the chosen kind (not set as the current one)."""
    if chosen(kind) == "uvloop":
        uvloop: Any = importlib.import_module("uvloop")
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], kind: str | None = None) -> T:
    """`asyncio.run(main)` on the chosen loop (tasks left over are cancelled, as asyncio.run does)."""
    loop = new_loop(kind)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """`uvloop` or `asyncio`: what the running loop (or `loop`) is."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


@dataclass(frozen=True)
class Variant:
    """How a benchmark runs a timing-sensitive process: its event loop (auto: uvloop when installed)
    and whether it is pinned to a core of its own (`LOOP[+pin]` on the command line)."""

    loop: str
    pinned: bool

    @classmethod
    def parse(cls, text: str) -> Variant:
        loop, plus, pin = text.strip().partition("+")
        if loop not in CHOICES or (plus and pin != "pin"):
            raise UserError(f"{text!r} is not LOOP[+pin] with LOOP one of {', '.join(CHOICES)}")
        chosen(loop)  # uvloop asked for and not installed: say so now
        return cls(loop, pin == "pin")

    def __str__(self) -> str:
        return chosen(self.loop) + (" pinned" if self.pinned else " unpinned")


def variants(text: str) -> list[Variant]:
    """The comma-separated `LOOP[+pin]` list of a benchmark's --variants (UserError when one is bad)."""
    return [Variant.parse(v) for v in text.split(",") if v.strip()]


def variants_arg(text: str) -> str:
    """An argparse type for a benchmark's --variants: TEXT once every entry parses, so a bad one is a
    usage error naming the option (kept as text: the benchmarks record their settings as JSON)."""
    try:
        variants(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(err.message) from None
    return text
