"""The demo's quantization step on its own (the whole demo, training included, is the slow
test_pipeline.py::test_demo_end_to_end): the tuned checkpoint swept as fp32, wint8 and wint4 (and
q8_0 / q4_0 on llama.cpp when llama-cpp-python is installed) and the trade-off table in the
pipeline's report; without llama.cpp, the report says they were left out and how to install it."""

from __future__ import annotations

import json

import pytest

from ernie_ops.pipeline import demo
from ernie_ops.pipeline.demo import quantization_step
from ernie_ops.pipeline.record import PASSED
from ernie_ops.pipeline.runner import Pipeline
from ernie_ops.pipeline.spec import PipelineSpec


def _pipeline(tmp_path, checkpoint=None):
    suite = tmp_path / "suite.jsonl"
    suite.write_text(
        "".join(
            json.dumps({"id": f"n{i}", "prompt": f"Even or odd: {i}", "expected": "odd"}) + "\n"
            for i in range(4)
        )
    )
    spec = PipelineSpec(recipe="unused.yaml", eval_suite=str(suite), eval_max_tokens=4, bench_num_prompts=4)
    pipeline = Pipeline.create(spec, directory=tmp_path / "demo", echo=lambda _: None)
    if checkpoint is not None:
        pipeline.record.stages["export"].outputs["path"] = str(checkpoint)
        pipeline.record.stages["verify"].status = PASSED
    return pipeline


def _rows(tmp_path):
    sweep = json.loads((tmp_path / "demo" / "quantization" / "report.json").read_text())
    return {r["variant"]: r for r in sweep["variants"]}


NOT_INSTALLED = "llama-cpp-python is not installed (the `llamacpp` extra)"  # the engine's own words


def test_quantization_step_adds_the_tradeoff_table(tiny_dense, tmp_path, monkeypatch):
    """Without llama.cpp (CI's install; here it may be installed, so it is made to look absent)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "llamacpp_unavailable", lambda: NOT_INSTALLED)
    assert quantization_step(_pipeline(tmp_path)) is None  # nothing exported and verified: nothing to sweep

    said: list[str] = []
    assert quantization_step(_pipeline(tmp_path, tiny_dense), echo=said.append) == 0
    rows = _rows(tmp_path)
    assert list(rows) == ["fp32", "wint8", "wint4"] and all(r["status"] == "passed" for r in rows.values())
    assert rows["wint4"]["vs_reference"]["paired"] == 4
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "## Quantization: the tuned model as fp32, wint8 and wint4\n" in report
    assert "### Pareto front" in report and "| wint8 | paddle | wint8 | passed |" in report
    assert "# Sweep" not in report  # the sweep's own title is left out
    sweep_yaml = (tmp_path / "demo" / "inputs" / "sweep.yaml").read_text()  # `ernie-ops sweep` reruns it
    assert "llamacpp" not in sweep_yaml
    # llama.cpp is not installed here: said so, with the command that installs it
    assert f"llama.cpp's q8_0 and q4_0 variants were left out: {NOT_INSTALLED}. To add them" in report
    assert 'pip install -e ".[llamacpp]"' in report and "10-12 minutes" in report
    assert any("q8_0 and q4_0 left out" in line for line in said)


@pytest.mark.skipif(demo.llamacpp_unavailable() is not None, reason="llama-cpp-python is not installed")
def test_quantization_step_adds_llamacpp_gguf_variants(tiny_dense, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = _pipeline(tmp_path, tiny_dense)
    assert quantization_step(pipeline) == 0
    rows = _rows(tmp_path)
    assert list(rows) == ["fp32", "wint8", "wint4", "q8_0", "q4_0"]
    assert all(r["status"] == "passed" for r in rows.values()), rows
    assert [rows[q]["engine"] for q in ("q8_0", "q4_0")] == ["llamacpp", "llamacpp"]
    assert rows["q4_0"]["vs_reference"]["paired"] == 4 and rows["q4_0"]["memory_gib"] > 0
    made = json.loads((tmp_path / "demo" / "quantization" / "sweep.json").read_text())["exports"]
    assert sorted(e["quantization"] for e in made.values()) == ["q4_0", "q8_0"]  # one GGUF each
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "## Quantization: the tuned model as fp32, wint8, wint4, q8_0 and q4_0\n" in report
    assert "| q4_0 | llamacpp | q4_0 | passed |" in report and "left out" not in report
    assert pipeline.record.demo == {}
