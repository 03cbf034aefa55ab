"""bench_serve_cpu --part paired: the engine worker it pairs with llama.cpp's own benchmarks, and
the summary of the pairs."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def paired(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from servebench import paired

    return paired


def pair(metric: str, engine: float, llama: float) -> dict:
    return {
        "metric": metric,
        "engine": {metric: engine},
        "llamacpp-f32": {metric: llama},
        "ratio": engine / llama,
    }


def test_the_summary_is_the_median_of_each_pairs_ratio(paired):
    """Not a ratio of medians: a pair whose both sides fell in a slow window counts as one ratio."""
    pairs = [
        pair("b1_decode_tok_s", 20.0, 25.0),  # 0.8
        pair("b1_decode_tok_s", 33.0, 30.0),  # 1.1
        pair("b1_decode_tok_s", 22.0, 20.0),  # 1.1
        pair("b8_e2e_tok_s", 60.0, 50.0),
    ]
    summary = paired.summarize(pairs)
    b1 = summary["b1_decode_tok_s"]
    assert b1["pairs"] == 3 and b1["engine_ahead"] == 2
    assert b1["ratio_median"] == pytest.approx(1.1)
    assert (b1["ratio_min"], b1["ratio_max"]) == (pytest.approx(0.8), pytest.approx(1.1))
    assert (b1["engine_median"], b1["llamacpp_median"]) == (22.0, 25.0)
    assert summary["b8_e2e_tok_s"]["ratio_median"] == pytest.approx(1.2)


def worker_args(model_dir: Path) -> argparse.Namespace:
    return argparse.Namespace(model_dir=model_dir, threads=1)


def test_the_engine_worker_measures_each_shape_on_request(paired, tiny_dense):
    """One loaded engine answers batch-1 and BATCH-request measurements line by line, and ends (exit 0)
    when its stdin closes."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.NamedTemporaryFile("w+") as log:
        worker = paired.EngineWorker(worker_args(tiny_dense), env, 3, log)
        try:
            b1 = worker.measure("b1", 0)
            b8 = worker.measure("b8", 1)
        finally:
            worker.close()
    assert set(b1) == {"b1_decode_tok_s", "b1_ttft_s"} and b1["b1_decode_tok_s"] > 0 and b1["b1_ttft_s"] > 0
    assert set(b8) == {"b8_e2e_tok_s"} and b8["b8_e2e_tok_s"] > 0
    assert worker.proc.returncode == 0


def test_an_engine_worker_that_cannot_load_says_why(paired, tmp_path):
    """A worker that dies before it is ready is an error carrying its log, not a hang."""
    with (
        tempfile.NamedTemporaryFile("w+") as log,
        pytest.raises(RuntimeError, match="the engine worker exited") as err,
    ):
        paired.EngineWorker(worker_args(tmp_path / "missing"), dict(os.environ), 3, log)
    assert "missing" in str(err.value)


def test_an_engine_worker_that_stops_answering_is_killed(paired, tmp_path, monkeypatch):
    """A worker that hangs (here: one that never answers) is killed after REPLY_TIMEOUT_S, not waited on."""
    silent = tmp_path / "silent.py"
    silent.write_text("import time\ntime.sleep(600)\n")
    monkeypatch.setattr(paired, "SCRIPT", str(silent))
    monkeypatch.setattr(paired, "REPLY_TIMEOUT_S", 1.0)
    with (
        tempfile.NamedTemporaryFile("w+") as log,
        pytest.raises(RuntimeError, match="gave no answer within 1 s and was killed"),
    ):
        paired.EngineWorker(worker_args(tmp_path), dict(os.environ), 3, log)


def test_paired_refuses_to_run_without_llama_cpps_own_benchmarks(repo_script_env, tmp_path):
    """Without llama-bench / llama-batched-bench there is nothing to pair with: exit 2 and how to get them."""
    import subprocess

    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_serve_cpu.py"), "--part", "paired", "--quick"],
        capture_output=True,
        text=True,
        env=repo_script_env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "scripts/build_llama_server.sh" in result.stderr


@pytest.fixture
def repo_script_env():
    from ernie_ops.serve.backends import _llama_server

    return {**os.environ, _llama_server.BINARY_ENV: "off"}


def test_decode_step_part_times_numpy_and_each_compiled_kernel_set(tiny_dense, monkeypatch, tmp_path, capsys):
    """--part decode-step end to end on the tiny model (the 0.3B one is what it builds by default)."""
    import json

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from servebench import decode_step

    monkeypatch.setattr(decode_step, "build_model", lambda _dir: tiny_dense)
    monkeypatch.setattr(decode_step, "ROWS", (1, 3))
    out = tmp_path / "step.json"
    from ernie_ops.serve.engine.forward import blas_threads

    before = blas_threads()
    args = argparse.Namespace(model_dir=tiny_dense, quick=True, rounds=2, threads=1, out=out)
    assert decode_step.decode_step_main(args) == 0
    assert blas_threads() == before  # the thread count it found is restored
    report = json.loads(out.read_text())
    paths = report["results"]
    assert "numpy" in paths and "compiled, AVX2" in paths  # every CI machine here has AVX2
    for path in paths.values():
        assert set(path["best_ms"]) == {"1", "3"} and all(ms > 0 for ms in path["best_ms"].values())
        assert all(len(rounds) == 2 for rounds in path["rounds_ms"].values())
    assert paths["numpy"]["vs_numpy"] == {"1": 1.0, "3": 1.0}
    assert report["settings"]["threads"] == 1  # --threads is what numpy's steps ran on
    assert "step, ms (best round)" in capsys.readouterr().out
