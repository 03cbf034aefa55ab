"""`ernie-ops sweep`: the spec's file:line errors, the GPU recipe's commands, the trade-off
recommendation, and a real sweep on the tiny model (one variant that fails to start, resumed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from finished_run import finished_run

from ernie_ops.cli.main import main
from ernie_ops.errors import UserError
from ernie_ops.sweep.report import pareto, recommend
from ernie_ops.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parent.parent
GPU_RECIPE = REPO / "recipes" / "sweeps" / "ERNIE-4.5-21B-A3B_quantization.yaml"
needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python (the `llamacpp` extra) is not installed",
)


def _suite(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "suite.jsonl"
    items = [{"id": f"q{i}", "prompt": f"Say {i}.", "expected": str(i), "judge": "exact"} for i in range(n)]
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_spec_problems_name_their_lines(tmp_path):
    suite = _suite(tmp_path)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        f"eval_suite: {suite}\n"  # 1
        "checkpoint: some/model\n"  # 2
        "variants:\n"  # 3
        "  - {name: a, quantization: wint8}\n"  # 4
        "  - name: b\n"  # 5
        "    quantisation: wint4\n"  # 6
        "  - name: c\n"  # 7
        "    engine: llamacpp\n"  # 8
        "  - {name: a, max_num_seqs: many}\n"  # 9
        "load:\n"  # 10
        "  mode: find_max\n"  # 11
        "  slo_ttft_ms: -1\n"  # 12
    )
    with pytest.raises(UserError) as err:
        load_sweep(spec)
    text = str(err.value)
    assert f"{spec}:6: error: variants[1].quantisation: unknown serve-profile key" in text
    assert "did you mean 'quantization'?" in text
    assert (
        f"{spec}:7: error: variants[2].quantization: an engine: llamacpp variant needs the GGUF type" in text
    )
    assert f"{spec}:9: error: variants[3].name: 'a' names two variants" in text
    assert f"{spec}:9: error: variants[3].max_num_seqs: expected int, got 'many'" in text
    assert f"{spec}:11: error: load.mode: 'find_max' is not one of concurrency, rate, find_max_rate" in text
    assert f"{spec}:12: error: load.slo_ttft_ms: must be > 0" in text


def test_suite_problems_before_anything_is_served(tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text('{"id": "a", "prompt": "hi", "expected": "x", "judge": "contains"}\n')
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"eval_suite: {suite}\ncheckpoint: m\nvariants: [{{name: x}}]\n")
    with pytest.raises(UserError, match=rf"{suite}:1: unknown judge 'contains'"):
        load_sweep(spec)


def test_variant_checked_by_the_profile_rules(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        f"eval_suite: {_suite(tmp_path)}\ncheckpoint: m\n"
        "variants:\n  - {name: x, engine: paddle, quantization: q4_0}\n"
    )
    with pytest.raises(
        UserError, match=r"sweep.yaml:4: error: variants\[0\].quantization: 'q4_0' is a GGUF type"
    ):
        load_sweep(spec)


def test_gpu_recipe_prints_every_variant_command(capsys):
    assert main(["sweep", str(GPU_RECIPE), "--print-command"]) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if not line.startswith("#")]
    assert len(commands) == 4
    assert "fastdeploy.entrypoints.openai.api_server" in commands[0] and "--quantization" not in commands[0]
    assert "--quantization wint8" in commands[1] and "--quantization wint4" in commands[2]
    assert commands[3].split()[1:3] == ["vllm", "serve"] and "--dtype bfloat16" in commands[3]


def test_every_shipped_sweep_prints_its_commands(capsys):
    printed = {}
    for path in sorted(GPU_RECIPE.parent.glob("*.yaml")):
        assert main(["sweep", str(path), "--print-command"]) == 0, path
        printed[path.name] = capsys.readouterr().out
        variants = load_sweep(path, check_files=False)[0].variants
        assert printed[path.name].count("# ") == len(variants), path
    cpu = printed["ERNIE-4.5-0.3B_cpu.yaml"]
    assert (
        "# gguf-q4_0  (first: ernie-ops export models/ERNIE-4.5-0.3B-Paddle --format gguf --quant q4_0" in cpu
    )
    assert "--quantization wint4" in cpu


def _row(name, score=0.5, quality_ok=True, memory=1.0, rate=2.0, status="passed", met=True):
    return {
        "variant": name,
        "status": status,
        "failed_step": None if status == "passed" else "serve",
        "score": score if status == "passed" else None,
        "quality_ok": quality_ok,
        "met_slo": met,
        "sustainable_rate": rate,
        "output_tokens_per_s": 10.0,
        "memory_gib": memory,
        "memory_source": "peak RSS",
    }


def test_recommendation_is_the_least_memory_that_qualifies():
    table = [
        _row("bf16", memory=40),
        _row("wint8", memory=22),
        _row("wint4", memory=12, quality_ok=False),  # too much quality lost
        _row("tight", memory=10, met=False, rate=None),  # missed the SLO
        _row("dead", status="failed"),
    ]
    pick = recommend(table, "bf16", 0.02)
    assert pick["variant"] == "wint8"
    assert [r["qualifies"] for r in table] == [True, True, False, False, False]
    assert "missed the SLO" in table[3]["why_not"] and "quality more than 0.02" in table[2]["why_not"]
    assert recommend([_row("bf16", status="failed"), _row("w")], "bf16", 0.02)["variant"] is None
    close = [_row("fp32", memory=0.593, rate=113), _row("wint4", memory=0.590, rate=25)]
    assert recommend(close, "fp32", 0.02)["variant"] == "fp32"  # 0.5% less memory does not buy 4x slower
    same = [_row("fp32", memory=0.587, rate=136), _row("wint4", memory=0.587, rate=138)]
    assert recommend(same, "fp32", 0.02)["variant"] == "fp32"  # equal within noise: the first listed
    assert recommend(same[::-1], "wint4", 0.02)["variant"] == "wint4"
    assert set(pareto(table, "sustainable_rate")) == {"bf16", "wint8", "wint4"}


def _write_spec(tmp_path: Path, model: Path, variants: str, extra: str = "") -> Path:
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for x in %}never closed")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        f"name: cpu\ncheckpoint: {model}\nvariants:\n{variants.format(bad=bad)}"
        f"eval_suite: {_suite(tmp_path)}\neval_max_tokens: 8\nsmoke_expect: []\nmax_drop: 1.0\n"
        "load: {concurrency: [2], num_prompts: 4, input_len: 8, output_len: 4, slo_ttft_ms: 60000}\n"
        f"startup_timeout: 120\n{extra}"
    )
    return spec


def test_sweep_on_cpu_records_a_failed_start_and_resumes(tiny_dense, tmp_path, monkeypatch, capsys):
    import ernie_ops.serve as serving

    monkeypatch.chdir(tmp_path)  # the servers' own logs go to ./runs/serve
    spec = _write_spec(
        tmp_path,
        tiny_dense,
        "  - {{name: ref, engine: paddle, max_num_seqs: 4}}\n"
        "  - {{name: broken, engine: paddle, chat_template: {bad}}}\n"
        "  - {{name: wint8, engine: paddle, quantization: wint8, max_num_seqs: 1}}\n",
    )
    out = tmp_path / "sw"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    record = json.loads((out / "sweep.json").read_text())
    variants = record["variants"]
    assert [variants[n]["status"] for n in ("ref", "broken", "wint8")] == ["passed", "failed", "passed"]
    broken = variants["broken"]
    assert broken["failed_step"] == "serve" and broken["steps"]["eval"]["status"] == "pending"
    assert "chat template" in broken["steps"]["serve"]["diagnosis"]
    assert broken["steps"]["stop"]["status"] == "passed"
    assert serving.servers() == []  # every server stopped
    report = json.loads((out / "report.json").read_text())
    rows = {r["variant"]: r for r in report["variants"]}
    assert rows["ref"]["memory_gib"] > 0.05 and rows["ref"]["output_tokens_per_s"] > 0
    assert rows["ref"]["ttft_p99_ms"] >= rows["ref"]["ttft_p50_ms"] > 0
    vs = rows["wint8"]["vs_reference"]
    assert vs["paired"] == 3 and vs["low"] <= vs["delta"] <= vs["high"]
    assert report["recommendation"]["variant"] in ("ref", "wint8")
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 1
    assert "broken** at serve" in (out / "report.md").read_text()
    assert rows["wint8"]["quantization"] == "wint8"
    assert "--quantization wint8" in (out / "variants" / "wint8" / "serve.log").read_text()

    capsys.readouterr()
    assert main(["sweep", "--resume", str(out)]) == 0
    text = capsys.readouterr().out
    assert "already passed, not redone: ref, wint8" in text
    again = json.loads((out / "sweep.json").read_text())["variants"]
    assert (again["ref"]["runs"], again["broken"]["runs"]) == (1, 2)
    assert again["broken"]["status"] == "failed"


def test_ctrl_c_stops_the_server_and_leaves_a_resumable_sweep(tiny_dense, tmp_path, monkeypatch):
    import ernie_ops.serve as serving
    from ernie_ops.sweep.runner import VariantRun

    monkeypatch.chdir(tmp_path)
    spec = _write_spec(tmp_path, tiny_dense, "  - {{name: only, engine: paddle, max_num_seqs: 2}}\n")
    out = tmp_path / "sw"
    real_eval = VariantRun._eval

    def interrupted(self):
        assert serving.servers()  # the server is up when Ctrl-C lands
        raise KeyboardInterrupt

    monkeypatch.setattr(VariantRun, "_eval", interrupted)
    assert main(["sweep", str(spec), "--out", str(out)]) == 130
    record = json.loads((out / "sweep.json").read_text())
    only = record["variants"]["only"]
    assert (record["status"], only["status"], only["steps"]["eval"]["status"]) == ("interrupted",) * 3
    assert only["steps"]["stop"]["status"] == "passed" and serving.servers() == []
    assert (out / "report.md").is_file()

    monkeypatch.setattr(VariantRun, "_eval", real_eval)
    assert main(["sweep", "--resume", str(out)]) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert (again["status"], again["variants"]["only"]["status"], again["variants"]["only"]["runs"]) == (
        "finished",
        "passed",
        2,
    )


@needs_llama_cpp
def test_llamacpp_variants_share_one_prepared_gguf_export(tiny_dense, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _write_spec(
        tmp_path,
        tiny_dense,
        "  - {{name: q4, engine: llamacpp, quantization: q4_0, max_model_len: 256}}\n"
        "  - {{name: q4-small, engine: llamacpp, quantization: q4_0, max_model_len: 128}}\n",
    )
    out = tmp_path / "sw"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert [e["format"] + ":" + e["quantization"] for e in record["exports"].values()] == ["gguf:q4_0"]
    made = next(iter(record["exports"].values()))["path"]
    assert Path(made).is_file() and Path(made).parent == out / "exports"
    assert record["variants"]["q4-small"]["steps"]["prepare"]["summary"].startswith("reused")
    assert all(v["status"] == "passed" for v in record["variants"].values())


def test_memory_as_the_gpu_engines_report_it(tmp_path):
    from ernie_ops.sweep.memory import engine_report

    fd = tmp_path / "fd"
    fd.mkdir()
    # FastDeploy's worker logs its profile run as one tuple; vLLM one line each
    (fd / "workerlog.0").write_text(
        "INFO ('After running the profile, the memory usage info is as follows:', '\\nDevice Total memory: "
        "79.1', '\\nPaddle reserved memory: 45.2', '\\nPaddle allocated memory: 41.5', "
        "'\\nAvailable KV Cache meomory: 27.75', 'Profile time: 3.2')\n"
    )
    assert engine_report(fd) == {"weights_gib": 41.5, "kv_cache_gib": 27.75, "source": "FastDeploy's log"}
    vllm = tmp_path / "vllm"
    vllm.mkdir()
    (vllm / "server.log").write_text(
        "INFO Model loading took 40.7 GiB and 21.3 seconds\nINFO Available KV cache memory: 28.1 GiB\n"
    )
    assert engine_report(vllm) == {"weights_gib": 40.7, "kv_cache_gib": 28.1, "source": "vLLM's log"}
    assert engine_report(tmp_path / "none") == {}


def test_gpu_memory_counts_only_the_server_processes():
    from types import SimpleNamespace

    from ernie_ops.sweep.memory import gpu_memory

    class Nvml:  # NVML's calls as pynvml names them; no GPU here to ask
        def nvmlInit(self):
            pass

        def nvmlShutdown(self):
            pass

        def nvmlDeviceGetCount(self):
            return 2

        def nvmlDeviceGetHandleByIndex(self, i):
            return i

        def nvmlDeviceGetComputeRunningProcesses(self, handle):
            used = {0: [(10, 5 << 30), (99, 7 << 30)], 1: [(11, 3 << 30), (12, None)]}[handle]
            return [SimpleNamespace(pid=p, usedGpuMemory=u) for p, u in used]

    assert gpu_memory({10, 11, 12}, Nvml()) == 8 << 30
    assert gpu_memory({42}, Nvml()) is None


def test_a_run_gets_its_exports_made_into_the_run_once(tiny_dense, tmp_path):
    """A run directory: the GGUF and transformers-layout exports go into the run and its run.json,
    as `ernie-ops export` puts them; a second variant (and the sweep's cache) reuses them."""
    import dataclasses

    from ernie_ops.serve.exports import prepare
    from ernie_ops.serve.profile import profile_for_checkpoint
    from ernie_ops.sweep.record import SweepRecord
    from ernie_ops.train.record import RunRecord

    run = finished_run(tmp_path / "runs", tiny_dense)
    (tmp_path / "sw").mkdir()
    record = SweepRecord("s", str(tmp_path / "sw"), {})
    said: list[str] = []
    gguf = profile_for_checkpoint(str(run), ["engine=llamacpp", "quantization=q4_0"])
    made = prepare(gguf, record, said.append)
    assert made.summary.startswith("exported into the run") and made.profile.model.endswith("-q4_0.gguf")
    assert RunRecord.load(run).exports["gguf"]["q4_0"]["path"] == made.profile.model
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["exports"] == record.exports
    again = prepare(dataclasses.replace(gguf, max_model_len=128), record, said.append)
    assert (again.profile.model, again.summary.startswith("reused")) == (made.profile.model, True)
    assert len(said) == 1  # one export made

    hf = prepare(profile_for_checkpoint(str(run), ["engine=vllm"]), record, said.append)
    assert (Path(hf.profile.model) / "config.json").is_file()
    assert RunRecord.load(run).exports["hf"]["path"] == hf.profile.model
    untouched = prepare(profile_for_checkpoint(str(run), ["engine=paddle"]), record, said.append)
    assert untouched.profile.model == str(run) and untouched.summary.startswith("nothing to prepare")
    assert untouched.export is None


def test_the_export_an_engine_needs(tmp_path):
    """llama.cpp: the GGUF type asked for, f16 when the profile keeps its default (bf16), a refusal
    for a quantization GGUF has no type for; vLLM: the transformers layout; the others: nothing."""
    from types import SimpleNamespace

    from ernie_ops.serve.exports import needed

    def profile(engine, quantization="bf16"):
        return SimpleNamespace(engine=engine, quantization=quantization)

    assert needed(profile("llamacpp", "q4_0")) == ("gguf", "q4_0")
    assert needed(profile("llamacpp")) == ("gguf", "f16")
    assert needed(profile("vllm")) == ("hf", None)
    assert needed(profile(None), engine="vllm") == ("hf", None)  # the engine chosen for the profile
    assert needed(profile("llamacpp"), engine="paddle") is None
    assert needed(profile("fastdeploy", "wint4")) is None
    with pytest.raises(UserError, match="quantization 'wint8' is not a GGUF type") as err:
        needed(profile("llamacpp", "wint8"))
    assert "quantization: q8_0" in str(err.value)
