"""Shared fixtures: the tiny ERNIE 4.5 models (built once per session) and a CLI runner."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# A shell that starts the tests in the background (`cmd &`, nohup) makes them ignore SIGINT, and an
# ignored signal stays ignored across exec: the Ctrl-C tests' children would never see theirs.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _own_serve_state(tmp_path_factory, monkeypatch):
    """Detached-server records and port locks in a directory of the test's own, not the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


# The `cpu` extra: the tiny models, ERNIEKit's schema and every `slow` test need it. Where it is
# absent (`pip install -e ".[serve,dev]"`) those tests are skipped with the reason, not failed.
CPU_STACK = ("paddle", "erniekit", "paddleformers")
CPU_STACK_FIXTURES = {"tiny_dense", "tiny_moe"}


def missing_cpu_stack() -> str | None:
    """Why the tests that need Paddle / ERNIEKit / PaddleFormers cannot run here; None when they can."""
    import importlib.util

    absent = [name for name in CPU_STACK if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    return f"needs the `cpu` extra (Paddle, ERNIEKit, PaddleFormers); not installed here: {', '.join(absent)}"


def _require_cpu_stack() -> None:
    if reason := missing_cpu_stack():
        pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_dense(tmp_path_factory) -> Path:
    _require_cpu_stack()
    from ernie_ops.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-dense", kind="dense", seed=0)


@pytest.fixture(scope="session")
def tiny_moe(tmp_path_factory) -> Path:
    _require_cpu_stack()
    from ernie_ops.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-moe", kind="moe", seed=0)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_dense, tmp_path_factory) -> Path:
    """The tiny dense model as a q8_0 GGUF file (llama.cpp's engines)."""
    from ernie_ops.train.gguf_format import convert

    return convert(tiny_dense, tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf", "q8_0").path


def _ernie_ops_exe() -> list[str]:
    """The installed console script when there is one (what users run), else the module."""
    exe = shutil.which("ernie-ops", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "ernie_ops"]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*_ernie_ops_exe(), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env
    )


@pytest.fixture(scope="session")
def cli():
    return run_cli


def pytest_collection_modifyitems(config, items):
    """`cpu_stack` and `slow` tests, and those on the tiny models, need the `cpu` extra; `gpu` tests
    need a CUDA GPU: each skipped, with the reason, where it is missing."""
    if reason := missing_cpu_stack():
        no_stack = pytest.mark.skip(reason=reason)
        for item in items:
            on_tiny_model = CPU_STACK_FIXTURES & set(getattr(item, "fixturenames", ()))
            if "cpu_stack" in item.keywords or "slow" in item.keywords or on_tiny_model:
                item.add_marker(no_stack)

    from ernie_ops.train.launch import detect_gpus

    if detect_gpus():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
