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
    assert "No module named 'google'" in result.stderr or "'google'" in result.stderr
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
