"""The demo's quantization step on its own (the whole demo, training included, is the slow
test_pipeline.py::test_demo_end_to_end): the tuned checkpoint swept as fp32, wint8 and wint4 and the
trade-off table in the pipeline's report."""

from __future__ import annotations

import json

from ernie_ops.pipeline.demo import quantization_step
from ernie_ops.pipeline.record import PASSED
from ernie_ops.pipeline.runner import Pipeline
from ernie_ops.pipeline.spec import PipelineSpec


def test_quantization_step_adds_the_tradeoff_table(tiny_dense, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "suite.jsonl"
    suite.write_text(
        "".join(
            json.dumps({"id": f"n{i}", "prompt": f"Even or odd: {i}", "expected": "odd"}) + "\n"
            for i in range(4)
        )
    )
    spec = PipelineSpec(recipe="unused.yaml", eval_suite=str(suite), eval_max_tokens=4, bench_num_prompts=4)
    pipeline = Pipeline.create(spec, directory=tmp_path / "demo", echo=lambda _: None)
    assert quantization_step(pipeline) is None  # nothing exported and verified: nothing to sweep

    pipeline.record.stages["export"].outputs["path"] = str(tiny_dense)
    pipeline.record.stages["verify"].status = PASSED
    assert quantization_step(pipeline, echo=lambda _: None) == 0
    sweep = json.loads((tmp_path / "demo" / "quantization" / "report.json").read_text())
    rows = {r["variant"]: r for r in sweep["variants"]}
    assert list(rows) == ["fp32", "wint8", "wint4"] and all(r["status"] == "passed" for r in rows.values())
    assert rows["wint4"]["vs_reference"]["paired"] == 4
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "## Quantization: the tuned model as fp32, wint8 and wint4" in report
    assert "### Pareto front" in report and "| wint8 | paddle | wint8 | passed |" in report
    assert "# Sweep" not in report  # the sweep's own title is left out
    assert (tmp_path / "demo" / "inputs" / "sweep.yaml").is_file()  # `ernie-ops sweep` reruns it
