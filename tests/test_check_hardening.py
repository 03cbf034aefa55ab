"""`ernie-ops check` on hostile input (#14): alias bombs, FIFOs, devices, symlink loops, huge
recipes. Each is reported with where and a fix, never a hang or a traceback. Commands that hung
before run in a subprocess with a generous deadline, so a regression fails instead of hanging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ernie_ops.cli.main import main
from ernie_ops.recipe import load, rules
from ernie_ops.recipe.check import SHOWN, check_recipe

REPO = Path(__file__).resolve().parent.parent
BASE = (REPO / "tests" / "broken_recipes" / "valid_base.yaml").read_text()
DEADLINE = 120  # seconds; the hangs this guards against never ended


def cli(*args: str, cwd: Path = REPO) -> tuple[int, str]:
    """`ernie-ops ARGS` in a child process: (exit status, stdout + stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "ernie_ops", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout + done.stderr


def check_json(*args: str) -> tuple[int, dict]:
    code, out = cli("check", *args, "--format", "json", "--max-problems", "0")
    return code, json.loads(out)


def bomb(levels: int = 9) -> str:
    """The "billion laughs" YAML: each anchor is ten aliases of the one before."""
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def only_error(report: dict) -> dict:
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    assert len(errors) == 1, report["problems"]
    return errors[0]


# --- 15: alias bombs, FIFOs, devices --------------------------------------------------------------


@pytest.mark.parametrize("overrides", [[], ["seed=1"]], ids=["no override", "with an override"])
def test_alias_bomb_is_refused_at_the_alias_line(tmp_path, overrides):
    recipe = write(tmp_path, BASE + bomb())
    code, report = check_json(str(recipe), *overrides)
    problem = only_error(report)
    assert code == 1
    assert problem["where"] == f"{recipe}:13"  # lol4 = ten *lol3 of 11,111 values each
    assert "the alias *lol3" in problem["message"] and "100,000 values" in problem["message"]
    assert problem["fix"]


def test_alias_bomb_in_an_override_value_is_refused(tmp_path):
    recipe = write(tmp_path, BASE)
    value = "[" + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}" if i else "1"] * 10) + "]" for i in range(7))
    _, report = check_json(str(recipe), f"seed={value}]")
    problem = only_error(report)
    assert problem["where"].startswith("override 'seed=[&a0")
    assert "100,000 values" in problem["message"]


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    recipe = write(tmp_path, BASE + "loop: &me [1, *me]\n")
    recipe_report, problems = load.load_recipe(recipe)
    assert recipe_report is None
    assert problems[0].where == f"{recipe}:9"
    assert "inside its own anchor" in problems[0].message


def test_a_few_aliases_are_fine(tmp_path):
    recipe = write(
        tmp_path,
        BASE.replace('eval_dataset_prob: "1.0"', "eval_dataset_prob: *p").replace(
            'train_dataset_prob: "1.0"', 'train_dataset_prob: &p "1.0"'
        ),
    )
    loaded, problems = load.load_recipe(recipe, ["seed=7"])
    assert loaded is not None and not problems
    assert loaded.values["eval_dataset_prob"] == "1.0"


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


def test_a_fifo_as_recipe_is_refused(fifo):
    code, report = check_json(str(fifo))
    problem = only_error(report)
    assert problem["where"] == str(fifo)
    assert "not a regular file (a FIFO)" in problem["message"]
    assert code == 1


def test_train_refuses_a_fifo_recipe_the_same_way(fifo):
    code, out = cli("train", str(fifo), "--dry-run")
    assert code == 2
    assert "not a regular file (a FIFO)" in out


def test_train_refuses_an_alias_bomb_with_the_checks_message(tmp_path):
    recipe = write(tmp_path, BASE + bomb())
    code, out = cli("train", str(recipe), "seed=1", "--dry-run", "--runs-dir", str(tmp_path / "runs"))
    assert code == 1
    assert f"{recipe}:13: error: the alias *lol3" in out


def dataset_recipe(tmp_path: Path, dataset: Path) -> Path:
    return write(tmp_path, BASE.replace("recipes/data/sft-train.jsonl", str(dataset)))


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (os.mkfifo, "not a regular file (a FIFO)"),
        (lambda p: p.symlink_to("/dev/zero"), "not a regular file (a character device)"),
        (
            lambda p: (p.symlink_to(p.with_name("b.jsonl")), p.with_name("b.jsonl").symlink_to(p)),
            "symlink loop",
        ),
    ],
    ids=["fifo", "/dev/zero", "symlink loop"],
)
def test_a_dataset_that_is_not_a_regular_file_is_refused_at_its_key(tmp_path, make, says):
    dataset = tmp_path / "a.jsonl"
    make(dataset)
    recipe = dataset_recipe(tmp_path, dataset)
    code, report = check_json(str(recipe))
    problem = only_error(report)
    assert (problem["where"], problem["key"]) == (f"{recipe}:4", "train_dataset_path")
    assert says in problem["message"]
    assert code == 1


# --- 16: messages instead of tracebacks -------------------------------------------------------------


def test_a_symlink_loop_as_recipe_is_named(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.symlink_to(b)
    b.symlink_to(a)
    _, report = check_json(str(a))
    assert "symlink loop" in only_error(report)["message"]


def test_deep_yaml_under_libyaml_limit_is_refused_with_its_key(tmp_path):
    recipe = write(tmp_path, BASE + "eval_steps: " + "[" * 500 + "]" * 500 + "\n")
    loaded, problems = load.load_recipe(recipe)
    assert loaded is None
    assert (problems[0].where, problems[0].key) == (f"{recipe}:9", "eval_steps")
    assert "nested more than" in problems[0].message


def test_deep_yaml_is_refused_without_libyaml(tmp_path, monkeypatch):
    """The pure-Python parser (ERNIEKit's) recurses: a RecursionError must not escape."""
    import yaml

    monkeypatch.delattr(yaml, "CSafeLoader")
    recipe = write(tmp_path, BASE + "eval_steps: " + "[" * 5000 + "]" * 5000 + "\n")
    loaded, problems = load.load_recipe(recipe)
    assert loaded is None and "nested" in problems[0].message


@pytest.mark.parametrize("override", ["x=" + "[" * 5000 + "]" * 5000, "x=" + "[" * 300 + "]" * 300])
def test_deep_override_is_refused(tmp_path, override):
    _, problems = load.load_recipe(write(tmp_path, BASE), [override])
    assert [p.where for p in problems] == [load.override_where(override)]
    assert "nested more than" in problems[0].message


# --- 17: many problems stay linear and are capped ----------------------------------------------------


def test_suggestions_are_bounded_with_many_unknown_keys(tmp_path, monkeypatch):
    """difflib costs ~0.5 ms a key: the number of look-ups must not grow with the recipe."""
    calls = []
    real = rules.did_you_mean
    monkeypatch.setattr(rules, "did_you_mean", lambda *a: calls.append(a) or real(*a))
    recipe = write(tmp_path, BASE + "".join(f"unknown_{i}: {i}\n" for i in range(2000)))
    report = check_recipe(recipe, lint_data=False)
    assert len(report.errors) == 2000
    assert len(calls) <= rules.SUGGESTIONS + 10


def test_the_report_shows_the_first_problems_and_counts_the_rest(tmp_path, capsys):
    recipe = write(tmp_path, BASE + "".join(f"unknown_{i}: {i}\n" for i in range(SHOWN + 50)))
    assert main(["check", str(recipe), "--no-data-lint"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert sum(": error: " in line or ": warning: " in line for line in lines) == SHOWN
    assert lines[-2].startswith("... and 51 more problem(s)")  # and the warning: no local model
    assert f"{SHOWN + 50} error(s)" in lines[-1]
    assert main(["check", str(recipe), "--no-data-lint", "--format", "json", "--max-problems", "3"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (len(report["problems"]), report["not_shown"], report["errors"]) == (3, SHOWN + 48, SHOWN + 50)
