"""`ernie-ops check`: the broken-recipe corpus, the shipped recipes, output formats and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ernie_ops.cli.main import main
from ernie_ops.recipe.schema import latest_version

BROKEN = Path(__file__).parent / "broken_recipes"
EXPECTED = yaml.safe_load((BROKEN / "EXPECTED.yaml").read_text())


def run_check(capsys, *args: str) -> tuple[int, dict]:
    code = main(["check", *args, "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


def test_every_broken_recipe_has_an_expectation():
    present = {p.name for p in BROKEN.iterdir() if p.name not in ("EXPECTED.yaml", "data")}
    assert present == set(EXPECTED)
    assert len(present) >= 30


def _line_of(where: str) -> int | str | None:
    if where.startswith("override"):
        return "override"
    head, _, tail = where.rpartition(":")
    return int(tail) if head and tail.isdigit() else None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_recipe_gets_its_specific_problem(name, repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)  # recipes resolve data paths from the working directory, like ERNIEKit
    want = EXPECTED[name]
    code, report = run_check(capsys, str(BROKEN / name), *want.get("args", []))
    if "errors" in want:
        assert report["errors"] == want["errors"], report["problems"]
        assert code == 0
        return
    matches = [
        p
        for p in report["problems"]
        if p["severity"] == want["severity"]
        and p["key"] == want["key"]
        and _line_of(p["where"]) == want["line"]
        and want["contains"] in p["message"] + " " + p["fix"]
    ]
    assert matches, json.dumps(report["problems"], indent=1)
    assert code == (1 if want["severity"] == "error" else 0)
    if want["line"] not in (None, "override"):
        assert matches[0]["where"].startswith(str(BROKEN / name) + ":")


def test_strict_makes_warnings_fatal(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    recipe = str(BROKEN / "batch_size_overwritten.yaml")
    assert run_check(capsys, recipe)[0] == 0
    assert run_check(capsys, recipe, "--strict")[0] == 1


def test_text_output_is_file_line_severity_key(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    assert main(["check", str(BROKEN / "typo_key.yaml")]) == 1
    out = capsys.readouterr().out
    assert f"{BROKEN / 'typo_key.yaml'}:9: error: lerning_rate: unknown key" in out
    assert "fix: did you mean 'learning_rate'?" in out
    assert "1 error(s)" in out.splitlines()[-1]


def test_overrides_fix_what_the_file_gets_wrong(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    code, report = run_check(
        capsys,
        str(BROKEN / "missing_train_file.yaml"),
        "train_dataset_path=recipes/data/sft-train.jsonl",
    )
    assert code == 0 and report["errors"] == 0


def test_parallel_degrees_that_divide_pass(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    code, report = run_check(
        capsys, str(BROKEN / "too_many_parallel_ranks.yaml"), "--gpus", "8", "--nnodes", "2"
    )
    assert code == 0, report["problems"]


def test_check_imports_no_paddle(repo):
    """On a cached or shipped schema, check stays light: no Paddle, no ERNIEKit import."""
    code = (
        "import sys; from ernie_ops.recipe.check import check_recipe; "
        f"check_recipe({str(BROKEN / 'typo_key.yaml')!r}); "
        "print([m for m in ('paddle', 'erniekit', 'ernie', 'paddleformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True)
    assert out.stdout.strip() == "[]"


def test_a_recipe_that_needs_a_newer_erniekit_is_checked_against_its_schema(
    tmp_path, repo, monkeypatch, capsys
):
    monkeypatch.chdir(repo)
    recipe = tmp_path / "vl.yaml"
    recipe.write_text(
        "stage: VL-SFT\nfine_tuning: LoRA\nmodel_name_or_path: baidu/ERNIE-4.5-VL-28B-A3B-Paddle\n"
        "train_dataset_path: recipes/data/vl-sft-train.jsonl\ntrain_dataset_prob: '1.0'\n"
        'train_dataset_type: erniekit\nernie_ops:\n  erniekit: ">=1.3"\n'
    )
    code, report = run_check(capsys, str(recipe))
    assert code == 0, report["problems"]  # warnings only
    assert latest_version() in report["schema"]  # the newest shipped snapshot inside >=1.3
    assert any("will not run with this install" in p["message"] for p in report["problems"])
    assert not any(p["key"] == "stage" for p in report["problems"])


def test_erniekit_1_3_has_no_default_dataset_type(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    code, report = run_check(capsys, str(BROKEN / "valid_base.yaml"), "--erniekit-version", "1.3.0")
    assert code == 1
    (problem,) = [p for p in report["problems"] if p["severity"] == "error"]
    assert problem["key"] == "train_dataset_type" and "no default" in problem["message"]
