"""Issue #14, the smaller items: listings that say when they are cut short, optional dependencies
that fail with the extra to install, no advisory banners, a verdict that says training was too
short to judge."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ernie_ops.cli.evaluate import _print_summary
from ernie_ops.errors import UserError
from ernie_ops.validate.evaluate import EvalReport, markdown

REPO = Path(__file__).resolve().parent.parent

SHOWN_FAILURES = 5  # the console lists 5, the report 20
LISTED = 20


def _report(failing: int) -> EvalReport:
    items: list[dict[str, Any]] = [
        {"id": f"q{n}", "judge": "exact", "score": 0.0, "error": None, "detail": "wrong", "prediction": "x"}
        for n in range(failing)
    ]
    summary = {"all": {"n": failing, "score": 0.0}}
    return EvalReport("s.jsonl", "s", "http://h", "m", "exact", "now", items=items, summary=summary)


def test_eval_console_says_how_many_failures_it_left_out() -> None:
    out = io.StringIO()
    _print_summary(_report(SHOWN_FAILURES + 1), None, None, out)
    text = out.getvalue()
    assert text.count("below 1.0: q") == SHOWN_FAILURES
    assert "and 1 more below 1.0" in text

    out = io.StringIO()
    _print_summary(_report(SHOWN_FAILURES), None, None, out)
    assert "more" not in out.getvalue()


def test_eval_report_says_how_many_failures_it_left_out() -> None:
    text = markdown(_report(LISTED + 3))
    assert f"{LISTED + 3} items below 1.0" in text
    assert "and 3 more below 1.0" in text
    assert "more below" not in markdown(_report(LISTED))


# --- optional dependencies -------------------------------------------------------------------


def _cli_without(module: str, *args: str) -> subprocess.CompletedProcess:
    """`ernie-ops ARGS` in a Python where `module` cannot be imported (as without its extra)."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        f"from ernie_ops.cli.main import main; sys.exit(main({list(args)!r}))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _names_the_extra(result: subprocess.CompletedProcess, extra: str) -> None:
    assert result.returncode == 2, result.stderr
    assert f"needs the `{extra}` extra" in result.stderr
    assert f'pip install -c constraints.txt -e ".[{extra}]"' in result.stderr
    assert "Traceback" not in result.stderr


def test_tiny_model_without_the_cpu_extra_names_it(tmp_path: Path) -> None:
    # protobuf (`google`) comes with Paddle: without the extra, sentencepiece cannot write its model
    result = _cli_without("google", "tiny-model", str(tmp_path / "tiny"))
    _names_the_extra(result, "cpu")
    assert "'google" in result.stderr  # the module that is missing
    assert not (tmp_path / "tiny").exists() and list(tmp_path.iterdir()) == []


def test_counting_tokens_without_the_cpu_extra_names_it(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text("{}")
    data = str(REPO / "tests" / "data_good" / "erniekit-sft.jsonl")
    _names_the_extra(_cli_without("ernie", "data", "lint", data, "--tokenizer", str(tmp_path)), "cpu")


def _engine_load(model: Path) -> None:
    from ernie_ops.serve.engine import Engine

    (model / "config.json").write_text('{"moe_num_experts": 0}')
    Engine.load(model)


def _server_run(model: Path) -> None:
    from ernie_ops.serve.openai_server import run

    run(model)  # uvicorn is imported before the model is loaded


def _server_app(model: Path) -> None:
    from ernie_ops.serve.openai_server import create_app

    create_app(None, "m")  # type: ignore[arg-type]  # fails at the import, before it uses the engine


def _forward_pass(model: Path) -> None:
    from ernie_ops.train.verify import forward_pass

    forward_pass(model)


def _schema(model: Path) -> None:
    from ernie_ops.recipe.schema import extract

    extract()


@pytest.mark.parametrize(
    ("missing", "extra", "call"),
    [
        ("paddle", "cpu", _engine_load),
        ("uvicorn", "serve", _server_run),
        ("fastapi", "serve", _server_app),
        ("paddle", "cpu", _forward_pass),
        ("erniekit", "cpu", _schema),
    ],
)
def test_every_optional_import_names_its_extra(tmp_path, monkeypatch, missing, extra, call) -> None:
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(UserError) as caught:
        call(tmp_path)
    assert f"needs the `{extra}` extra" in caught.value.message
    assert f".[{extra}]" in (caught.value.hint or "")


@pytest.mark.cpu_stack
def test_the_framework_advisory_is_hidden_and_real_warnings_are_not() -> None:
    # PaddleFormers imports transformers' tokenizer code, which logs this on every import
    code = (
        "import logging\n"
        "from ernie_ops.extras import optional_imports\n"
        "with optional_imports('cpu', 'the test'):\n"
        "    import ernie.tokenizer\n"
        "logging.getLogger('transformers').warning('a real warning')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "None of PyTorch" not in result.stderr
    assert "a real warning" in result.stderr


# --- training too short to judge -------------------------------------------------------------


def _run(tmp_path: Path, steps: int, records: int, recipe: str = "batch_size: 1\n") -> Any:
    from ernie_ops.train.record import DataFile, RunRecord

    run_dir = tmp_path / "train-run"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text(recipe)
    run = RunRecord("train", str(run_dir), "r.yaml", last_step=steps)
    run.data = [
        DataFile("t.jsonl", "0" * 64, 1, records, "train"),
        DataFile("e.jsonl", "0" * 64, 1, 9, "eval"),
    ]
    return run


def test_a_run_under_an_epoch_whose_loss_barely_moved_is_too_short(tmp_path: Path) -> None:
    from ernie_ops.recipe.length import run_too_short

    why = run_too_short(_run(tmp_path, 4, 600), [5.12, 5.13, 5.11])
    assert why == (
        "training too short to judge: 4 steps (0.0067 epochs of 600 training records), "
        "loss 5.120 -> 5.110; raise max_steps, e.g. max_steps=600 (one epoch)"
    )


@pytest.mark.parametrize(
    ("steps", "recipe", "losses"),
    [
        (600, "batch_size: 1\n", [5.1, 5.1]),  # a whole epoch: the flat loss is not about length
        (4, "batch_size: 1\n", [5.1, 4.0]),  # the loss moved: it learnt something to judge
        (75, "batch_size: 2\ngradient_accumulation_steps: 4\n", [5.1, 5.1]),  # 8 sequences a step
    ],
)
def test_a_run_that_could_learn_is_not_too_short(tmp_path, steps, recipe, losses) -> None:
    from ernie_ops.recipe.length import run_too_short

    assert run_too_short(_run(tmp_path, steps, 600, recipe), losses) is None


def test_the_verdict_says_training_was_too_short_to_judge(tmp_path: Path) -> None:
    from ernie_ops.pipeline import stages
    from ernie_ops.pipeline.report import write_pipeline_report
    from ernie_ops.pipeline.runner import Pipeline
    from ernie_ops.pipeline.spec import PipelineSpec
    from ernie_ops.recipe.length import run_too_short

    said: list[str] = []
    p = Pipeline.create(PipelineSpec("r.yaml", "s.jsonl"), directory=tmp_path, echo=said.append)
    why = run_too_short(_run(tmp_path, 4, 600), [5.12, 5.11])
    p.record.stages["train"].outputs.update(
        run_dir=str(tmp_path / "train-run"), steps=4, first_loss=5.12, final_loss=5.11, too_short=why
    )
    p.record.stages["smoke"].outputs["passed"] = True
    for role in ("tuned", "base"):
        report = _report(3)
        path = report.write(tmp_path / "eval" / role)
        p.record.stages["eval"].outputs[role] = {"report": str(path), "score": 0.0}
    p.outputs = p.record.stages["compare"].outputs
    summary = stages.compare(p)
    for name in ("train", "compare"):
        p.record.stages[name].status = "passed"
    assert p.record.verdict == "DO NOT SHIP"
    assert summary.startswith("DO NOT SHIP: tuned 0.000 vs base 0.000 (+0.000); training too short")
    assert p._conclude(None, None) == 1
    assert f"verdict: DO NOT SHIP ({why}; the tuned model does not score above the base" in said[-1]
    md, _ = write_pipeline_report(p.record)
    text = md.read_text()
    assert f"**DO NOT SHIP**: {why}; the tuned model" in text
    assert f"4 steps; loss 5.1200 (first step) -> 5.1100 (last).\n\n**{why}**" in text  # in Training


@pytest.mark.parametrize(("records", "steps"), [(48, 600), (900, 900)])
def test_recipes_new_for_the_tiny_model_trains_long_enough_to_learn(tmp_path, records, steps) -> None:
    import yaml

    from ernie_ops.cli.main import main

    train = tmp_path / "train.jsonl"
    train.write_text('{"src": ["q"], "tgt": ["a"]}\n' * records)
    out = tmp_path / "mine.yaml"
    args = [
        "recipes",
        "new",
        "--model",
        "tiny",
        "--method",
        "sft-lora",
        "--train",
        str(train),
        "-o",
        str(out),
    ]
    assert main(args) == 0
    recipe = yaml.safe_load(out.read_text())
    # one epoch, at least the demo's 600 steps; one checkpoint, at the end (not one every 4 steps)
    assert (recipe["max_steps"], recipe["save_steps"], recipe["eval_steps"]) == (steps, steps, steps // 10)


SIGNAL_IN_A_WEAKREF_CALLBACK = """
import os, signal, sys, time, weakref
from ernie_ops.cli.main import signals_end_the_command
from ernie_ops.errors import Terminated

class Obj:
    pass

def callback(_):
    os.kill(os.getpid(), signal.SIGTERM)
    sum(range(100000))  # the handler runs here, where Python can only drop its exception

try:
    with signals_end_the_command():
        obj = Obj()
        ref = weakref.ref(obj, callback)
        del obj
        print("callback done", flush=True)
        time.sleep(30)
    sys.exit(0)
except Terminated as stop:
    sys.exit(128 + stop.signum)
"""


def test_a_sigterm_landing_in_a_weakref_callback_still_ends_the_command():
    # seen: `timeout 900 ernie-ops bench ...` kept running (the handler raised inside aiohttp's
    # weakref callback, and Python printed the exception and went on)
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_A_WEAKREF_CALLBACK], capture_output=True, text=True, timeout=25
    )
    assert done.returncode == 143, done.stderr
    assert "callback done" in done.stdout
