"""The event loop of the load generator, the null server and the gateway: uvloop when installed,
asyncio's own otherwise or when asked (ERNIE_OPS_EVENT_LOOP)."""

from __future__ import annotations

import asyncio
import importlib
import time

import pytest

from ernie_ops import eventloop
from ernie_ops.errors import UserError
from ernie_ops.validate import loadgen, timer
from ernie_ops.validate.client import Endpoint
from ernie_ops.validate.null_server import Behaviour, serve_in_thread

try:
    import uvloop  # noqa: F401

    HAVE_UVLOOP = True
except ImportError:
    HAVE_UVLOOP = False


def without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def refuse(name: str, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(eventloop.importlib, "import_module", refuse)


async def _which() -> str:
    return eventloop.name()


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_uvloop_is_used_when_installed(monkeypatch):
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.chosen() == "uvloop"
    assert eventloop.run(_which()) == "uvloop"
    monkeypatch.setenv(eventloop.ENV, "asyncio")  # forced back to the standard loop
    assert eventloop.run(_which()) == "asyncio"
    assert eventloop.run(_which(), "uvloop") == "uvloop"  # the argument wins over the environment


def test_without_uvloop_the_standard_loop_runs(monkeypatch):
    monkeypatch.delenv(eventloop.ENV, raising=False)
    without_uvloop(monkeypatch)
    assert eventloop.chosen() == "asyncio"
    assert eventloop.run(_which()) == "asyncio"
    with pytest.raises(UserError, match="uvloop is not installed"):
        eventloop.chosen("uvloop")


def test_a_wrong_choice_is_refused(monkeypatch):
    monkeypatch.setenv(eventloop.ENV, "trio")
    with pytest.raises(UserError, match=r"ERNIE_OPS_EVENT_LOOP='trio'.*auto, uvloop, asyncio"):
        eventloop.chosen()


@pytest.mark.parametrize("kind", ["asyncio", "auto"])
def test_run_returns_the_value_and_cancels_what_is_left(kind):
    left: list[asyncio.Task[None]] = []

    async def main() -> int:
        left.append(asyncio.ensure_future(asyncio.sleep(60)))
        await asyncio.sleep(0)
        return 7

    started = time.perf_counter()
    assert eventloop.run(main(), kind) == 7
    assert left[0].cancelled() and time.perf_counter() - started < 30


@pytest.mark.parametrize("kind", ["asyncio", "auto"])
def test_the_dispatchers_timer_works_on_either_loop(kind):
    async def go() -> float:
        waker = timer.Waker()
        try:
            due = time.perf_counter() + 0.002
            await waker.until(due)
            return time.perf_counter() - due
        finally:
            waker.close()

    assert eventloop.run(go(), kind) >= 0


@pytest.mark.parametrize("uv", [True, False])
def test_bench_runs_on_the_chosen_loop(monkeypatch, uv):
    if uv and not HAVE_UVLOOP:
        pytest.skip("uvloop is not installed")
    monkeypatch.delenv(eventloop.ENV, raising=False)
    if not uv:
        without_uvloop(monkeypatch)
    seen: list[str] = []
    real_run = loadgen.run

    async def spy(*args, **kwargs):
        seen.append(eventloop.name())
        return await real_run(*args, **kwargs)

    monkeypatch.setattr(loadgen, "run", spy)
    workload = loadgen.Workload.synthetic(loadgen.Length(4, 4), loadgen.Length(2, 2))
    options = loadgen.Options([1], warmup=0, progress=False, rates=[200.0], num_prompts=20)
    with serve_in_thread(Behaviour()) as server:
        result = loadgen.bench(Endpoint.parse(server.url), workload, options)
    assert seen == ["uvloop" if uv else "asyncio"]
    assert result.ok and result.levels[0].completed == 20


def test_a_benchmark_variant_is_a_loop_and_a_pinning():
    from ernie_ops import eventloop
    from ernie_ops.errors import UserError

    (a, b) = eventloop.variants("asyncio+pin, asyncio")
    assert (a.loop, a.pinned, str(a)) == ("asyncio", True, "asyncio pinned")
    assert (b.pinned, str(b)) == (False, "asyncio unpinned")
    for bad in ("asyncio+pinned", "tokio", "auto+"):
        with pytest.raises(UserError, match="LOOP\\[\\+pin\\]"):
            eventloop.variants(bad)


def test_a_bad_benchmark_variant_is_a_usage_error_naming_the_option(capsys):
    import argparse

    from ernie_ops import eventloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", type=eventloop.variants_arg, default="auto")
    assert parser.parse_args(["--variants", "auto,asyncio+pin"]).variants == "auto,asyncio+pin"
    with pytest.raises(SystemExit) as ended:
        parser.parse_args(["--variants", "auto,tokio"])
    assert ended.value.code == 2
    assert "argument --variants: 'tokio' is not LOOP[+pin]" in capsys.readouterr().err
