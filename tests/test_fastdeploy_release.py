"""FastDeploy flag tables extracted from each release's own source (scripts/extract_fastdeploy_flags.py),
and the dialect built on them (#16)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ernie_ops.errors import UserError
from ernie_ops.serve.fastdeploy import (
    DATA,
    check_command,
    dialect,
    extracted,
    flag_table,
    quantizations,
    release_table,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "extract_fastdeploy_flags.py"


def test_the_2_5_table_is_the_release_branch_s_with_its_commit():
    source = release_table("2.5")["source"]
    assert source["release"] == "2.5.0" and source["ref"] == "release/2.5"
    assert source["commit"] == "f3fb7e032cad403061258cfb0a2b5e228ac31465"
    assert release_table("2.6")["source"]["ref"] == "develop"
    assert extracted() == ("2.5", "2.6")


def test_2_5_has_its_own_flags_not_the_develop_ones():
    """What the develop-derived table got wrong: four develop-only flags, one 2.5-only flag."""
    for flag in ("--deploy-modality", "--moe-gate-fp32", "--model-loader-extra-config"):
        assert flag in flag_table("2.6") and flag not in flag_table("2.5")
        with pytest.raises(UserError, match=rf"{flag} does not exist in FastDeploy 2\.5"):
            check_command([flag, "x"], "2.5")
    assert "--enable-keep-sampling-mask" in flag_table("2.5")
    assert "--enable-keep-sampling-mask" not in flag_table("2.6")  # develop's history differs
    assert "--enable-keep-sampling-mask" not in flag_table("2.4")  # not in 2.4.0
    assert "--load-choices" in flag_table("2.3") and "--load-choices" not in flag_table("2.2")


def test_values_are_checked_against_choices_and_list_types():
    check_command(["--logprobs-mode", "processed_logits"], "2.5")
    with pytest.raises(UserError, match="not one of raw_logprobs"):
        check_command(["--logprobs-mode", "logits"], "2.5")
    check_command(["--cache-queue-port", "8183,8283"], "2.5")
    with pytest.raises(UserError, match="comma-separated ints"):
        check_command(["--cache-queue-port", "8183,x"], "2.5")


def test_parsers_of_a_release_with_a_table_are_the_names_its_source_registers():
    table = release_table("2.5")
    assert table["reasoning_parsers"] == ["ernie-45-vl", "ernie-45-vl-thinking", "ernie-x1", "qwen3"]
    assert table["tool_parsers"] == ["ernie-45-vl-thinking", "ernie-x1"]
    assert dialect("2.5").tool_parser("ernie-x1") == "ernie-x1"
    with pytest.raises(UserError, match=r"tool_call_parser 'qwen3' does not exist in FastDeploy 2\.5"):
        dialect("2.5").tool_parser("qwen3")
    assert dialect("2.1").reasoning_parser("ernie-x1") == "ernie_x1"  # older: the history table


def test_w4afp8_online_from_2_4_and_the_quantization_names_per_release():
    assert "w4afp8" in quantizations("2.0")  # the name: pre-quantized checkpoints only
    assert "w4afp8" in release_table("2.5")["online_mix_quant"]  # parse_quant_config's rewrite
    check_command(["--quantization", "w4afp8"], "2.4")
    with pytest.raises(
        UserError, match=r"online quantization of a BF16 checkpoint arrived in FastDeploy 2\.4"
    ):
        check_command(["--quantization", "w4afp8"], "2.3")
    assert "mxfp4" in quantizations("2.5") and "mxfp4" not in quantizations("2.4")


def _fake_tree(root: Path) -> None:
    """A FastDeploy-shaped tree written for this test (the shapes the extractor reads)."""
    files = {
        "setup.py": 'FASTDEPLOY_VERSION = os.environ.get("FASTDEPLOY_VERSION", "9.1.0")\n',
        "fastdeploy/engine/args_utils.py": (
            "from dataclasses import dataclass\n"
            "@dataclass\nclass EngineArgs:\n    block_size: int = 64\n    quantization: str = None\n"
            "    def add_cli_args(parser):\n"
            '        g = parser.add_argument_group("x")\n'
            '        g.add_argument("--block-size", type=int, default=EngineArgs.block_size)\n'
            '        g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)\n'
            '        g.add_argument("--quantization", type=parse_quantization, default=None)\n'
            '        g.add_argument("--ips", type=lambda s: s.split(",") if s else None)\n'
            '        g.add_argument("--on", action="store_true")\n'
            '        g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True)\n'
            '        g.add_argument("--enable-mm", action=DeprecatedOptionWarning)\n'
            '        g.add_argument("--mode", type=str, choices=["a", "b"], default="a")\n'
            '        g.add_argument("--cfg", type=json.loads)\n'
            "        return parser\n"
        ),
        "fastdeploy/entrypoints/openai/utils.py": (
            "def make_arg_parser(parser):\n"
            '    parser.add_argument("--port", default=8000, type=int)\n'
            '    parser.add_argument("--api-key", type=str, action="append")\n'
            "    return parser\n"
        ),
        "fastdeploy/model_executor/layers/quantization/__init__.py": (
            'QUANTIZATION_METHODS: List[str] = ["wint8", "w4afp8"]\n'
            "def parse_quant_config(args):\n"
            '    if quant_config_name == "w4afp8":\n        pass\n'
        ),
        "fastdeploy/reasoning/x.py": '@ReasoningParserManager.register_module("think-a")\nclass A: ...\n',
        "fastdeploy/entrypoints/openai/tool_parsers/t.py": (
            '@ToolParserManager.register_module("tool-b")\nclass B: ...\n'
        ),
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (git archive)")
def test_the_extractor_reads_a_git_archive_and_records_its_commit(tmp_path):
    tree = tmp_path / "fd"
    _fake_tree(tree)
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    archive = tmp_path / "fd.tar"
    subprocess.run([*git, "archive", "-o", str(archive), "HEAD"], check=True)
    out = tmp_path / "table.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(archive), "--ref", "release/9.1", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    table = json.loads(out.read_text())
    assert table["source"] == {
        **table["source"],
        "release": "9.1.0",
        "commit": commit.strip(),
        "ref": "release/9.1",
    }
    flags = table["flags"]
    assert flags["--block-size"] == {"type": "int", "default": "64"}  # EngineArgs.block_size resolved
    assert flags["--tensor-parallel-size"]["aliases"] == ["-tp"]
    assert flags["--quantization"]["type"] == "quantization" and flags["--ips"]["type"] == "csv"
    assert flags["--on"]["type"] == "switch" and flags["--cache"] == {
        "type": "bool_optional",
        "default": "true",
    }
    assert flags["--enable-mm"] == {"type": "switch", "deprecated": True, "default": "null"}
    assert flags["--mode"]["choices"] == ["a", "b"] and flags["--cfg"]["type"] == "json"
    assert flags["--port"]["default"] == "8000" and flags["--api-key"]["repeatable"] is True
    assert table["quantization_methods"] == ["wint8", "w4afp8"] and table["online_mix_quant"] == ["w4afp8"]
    assert table["reasoning_parsers"] == ["think-a"] and table["tool_parsers"] == ["tool-b"]


def test_the_extractor_refuses_what_is_not_a_fastdeploy_tree(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode != 0 and "not a FastDeploy 2.x source tree" in run.stderr
    assert not list(DATA.glob("*.tmp"))
