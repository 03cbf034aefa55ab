"""The CLI surface: help texts with examples, exit codes, and a start-up that imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ernie_ops.cli.main import SUBCOMMANDS, build_parser

HEAVY = ("paddle", "ernie", "erniekit", "paddleformers", "numpy", "datasets", "sentencepiece", "yaml")


def test_building_the_parser_imports_nothing_heavy():
    code = (
        "import sys; from ernie_ops.cli.main import build_parser; build_parser(); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"heavy modules imported at CLI start-up: {out}"


@pytest.mark.parametrize("name", [cls.name for cls in SUBCOMMANDS])
def test_every_subcommand_help_has_examples(cli, name):
    result = cli(name, "--help", timeout=30)
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout
    assert f"ernie-ops {name}" in result.stdout


def test_top_level_help_lists_every_subcommand(cli):
    result = cli("--help", timeout=30)
    assert result.returncode == 0
    for cls in SUBCOMMANDS:
        assert cls.name in result.stdout


def test_no_subcommand_prints_help_and_fails(cli):
    result = cli(timeout=30)
    assert result.returncode == 2
    assert "usage: ernie-ops" in result.stdout


def test_unknown_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["trian"])
    assert exc.value.code == 2


def test_models_json_lists_the_catalog(cli):
    result = cli("models", "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    names = [m["name"] for m in json.loads(result.stdout)]
    assert "ERNIE-4.5-21B-A3B" in names and "ERNIE-4.5-VL-424B-A47B" in names


def test_models_unknown_name_gets_a_suggestion_not_a_traceback(cli):
    result = cli("models", "ERNIE-4.5-21B-A3", timeout=30)
    assert result.returncode == 2
    assert "did you mean 'ERNIE-4.5-21B-A3B'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_ctrl_c_while_the_cli_is_still_importing_is_no_traceback():
    # Ctrl-C lands while the subcommand modules load (before main() runs): simulated exactly there
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *a, **k):\n"
        "    if name == 'ernie_ops.cli.bench':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = interrupted\n"
        "from ernie_ops.cli import entry\n"
        "sys.exit(entry())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.strip()) == (130, "interrupted")


def test_overrides_may_follow_options(tmp_path, capsys):
    from ernie_ops.cli.main import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: SFT\nmax_seq_len: 8192\n")
    assert main(["check", str(recipe), "--gpus", "1", "max_seq_len=-5"]) == 1
    assert "override 'max_seq_len=-5': error: max_seq_len: -5 is out of range" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # anything else unknown is still a usage error
        main(["check", str(recipe), "--gpus", "1", "--bogus"])
    assert exc.value.code == 2
