"""FastDeploy 2.5, the Thinking models' parsers and the GPUs FastDeploy's tables name (#16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ernie_ops.catalog import MODELS, find_model
from ernie_ops.errors import UserError
from ernie_ops.serve.fastdeploy import (
    DEFAULT_VERSION,
    build_launch,
    check_command,
    dialect,
    flag_table,
    quantizations,
)
from ernie_ops.serve.gpus import FASTDEPLOY_WHEEL_CAPABILITIES, GPUS, find_gpu, gpu_from_smi
from ernie_ops.serve.profile import load_profile

REPO = Path(__file__).resolve().parent.parent
PROFILES = sorted((REPO / "recipes" / "serve").glob("*.yaml"))
FD_PROFILES = [p for p in PROFILES if not p.stem.endswith("_vllm")]  # vLLM ones: tests/test_vllm.py


def test_2_5_is_the_default_dialect():
    assert DEFAULT_VERSION == "2.5" and dialect(None).version == "2.5"


@pytest.mark.parametrize("path", FD_PROFILES, ids=lambda p: p.stem)
def test_every_shipped_profile_renders_for_2_5_with_every_flag_and_value_in_its_table(path):
    profile = load_profile(path, ["fastdeploy_version=2.5"])
    launch = build_launch(profile, Path("/models/x"), is_vl="-VL-" in path.stem)
    args = launch.argv[3:]
    table = flag_table("2.5")
    negatives = {f"--no-{f[2:]}" for f, s in table.items() if s["type"] == "bool_optional"}
    for arg in args:
        if arg.startswith("--"):
            assert arg in table or arg in negatives, f"{arg} is not a FastDeploy 2.5 flag"
    check_command(args, "2.5")  # every value has the type its flag takes (raises otherwise)
    spec = find_model(path.stem.split("_")[0])
    if profile.reasoning_parser:
        assert args[args.index("--reasoning-parser") + 1] == spec.reasoning_parser
    if profile.tool_call_parser:
        assert args[args.index("--tool-call-parser") + 1] == spec.tool_call_parser


def test_the_thinking_models_parsers_exist_in_2_5():
    d = dialect("2.5")
    for spec in MODELS.values():
        if spec.reasoning_parser:
            assert d.reasoning_parser(spec.reasoning_parser) == spec.reasoning_parser
        if spec.tool_call_parser:
            assert d.tool_parser(spec.tool_call_parser) == spec.tool_call_parser
    assert find_model("ERNIE-4.5-21B-A3B-Thinking").tool_call_parser == "ernie-x1"
    assert find_model("ERNIE-4.5-VL-28B-A3B-Thinking").reasoning_parser == "ernie-45-vl-thinking"
    assert find_model("ERNIE-4.5-VL-28B-A3B-Thinking").tool_call_parser == "ernie-45-vl-thinking"
    assert find_model("ERNIE-4.5-21B-A3B").reasoning_parser is None  # not a thinking model


def test_w4afp8_is_a_2_5_quantization_online_since_2_4():
    """W4AFP8 (INT4 experts, FP8 activations): the name since 2.0, online from BF16 since 2.4 (#5282)."""
    assert "w4afp8" in quantizations("2.5")
    check_command(["--quantization", "w4afp8"], "2.5")
    with pytest.raises(UserError, match=r"arrived in FastDeploy 2\.4"):
        check_command(["--quantization", "w4afp8"], "2.3")
    with pytest.raises(UserError, match="not a quantization"):
        check_command(["--quantization", "w4afp16"], "2.5")
    check_command(["--quantization", '{"quantization": "mix_quant"}'], "2.0")  # JSON: any release


def test_the_gpu_table_has_every_gpu_fastdeploy_s_tables_name():
    for name in ("H100", "H800", "H20", "H20-144G", "A100", "A800", "L20", "A30", "A10", "RTX 4090", "T4"):
        find_gpu(name)
    t4 = find_gpu("T4 16GB")
    assert (t4.memory_gib, t4.compute_capability, t4.fp8) == (15.0, (7, 5), False)
    assert t4.compute_capability not in FASTDEPLOY_WHEEL_CAPABILITIES
    assert gpu_from_smi("Tesla T4", 15.0) is t4
    assert all(g.compute_capability in FASTDEPLOY_WHEEL_CAPABILITIES for g in GPUS if g is not t4)


def test_the_pre_quantized_wint2_checkpoints_are_in_the_catalog():
    """FastDeploy's supported-model table lists WINT2 for ERNIE-4.5-300B-A47B only (the -2Bits one)."""
    with_wint2 = {s.name for s in MODELS.values() if any("-2Bits-" in h for h in s.hub_ids)}
    assert with_wint2 == {"ERNIE-4.5-300B-A47B"}


def test_setup_gpu_refuses_a_pair_fastdeploy_does_not_document(tmp_path):
    import os
    import subprocess

    env = {
        **os.environ,
        "PADDLE_INDEX": "unused",
        "FASTDEPLOY_INDEX": "unused",
        "FASTDEPLOY_VERSION": "2.4.1",  # built for paddlepaddle-gpu 3.3.0, not the default 3.3.1
        "VENV": str(tmp_path / "venv"),
    }
    script = REPO / "scripts" / "setup_gpu.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 2
    assert "not a pair FastDeploy documents" in result.stderr and "3.3.0" in result.stderr
    assert not (tmp_path / "venv").exists(), "nothing may be installed"


def test_setup_gpu_pins_erniekit_to_the_commit_of_the_newest_schema_snapshot():
    import re

    from ernie_ops.doctor import FASTDEPLOY_PADDLE
    from ernie_ops.recipe.schema import LATEST, load_schema

    text = (REPO / "scripts" / "setup_gpu.sh").read_text()
    (ref,) = re.findall(r'ERNIE_REF="\$\{ERNIE_REF:-([0-9a-f]{40})\}"', text)
    assert ref == load_schema(LATEST).commit
    for fd, paddle in FASTDEPLOY_PADDLE.items():  # the script's pair table is doctor's
        assert f"{fd}*) echo {paddle} ;;" in text
    assert 'PADDLE_VERSION="${PADDLE_VERSION:-3.3.1}"' in text and "FASTDEPLOY_VERSION:-2.5" in text


def _versions(monkeypatch, found: dict[str, str], commit: str | None = None):
    from ernie_ops import doctor

    def dist_version(*names: str):
        return next(((n, found[n]) for n in names if n in found), None)

    monkeypatch.setattr(doctor, "dist_version", dist_version)
    monkeypatch.setattr(doctor, "_erniekit_source_commit", lambda: commit)
    (check,) = doctor.check_versions()
    return check


def test_doctor_reports_the_versions_and_a_documented_pair(monkeypatch):
    check = _versions(
        monkeypatch, {"paddlepaddle-gpu": "3.3.1", "fastdeploy-gpu": "2.5.0", "erniekit": "1.4.0"}
    )
    assert check.status == "ok" and check.data["documented_pair"] is True
    assert "paddlepaddle-gpu 3.3.1" in check.detail and "fastdeploy-gpu 2.5.0" in check.detail
    assert "erniekit 1.4.0" in check.detail and "a pair FastDeploy documents" in check.detail


def test_doctor_warns_on_a_pair_fastdeploy_does_not_document(monkeypatch):
    check = _versions(monkeypatch, {"paddlepaddle-gpu": "3.3.0", "fastdeploy-gpu": "2.5.0"})
    assert check.status == "warn" and check.data["documented_pair"] is False
    assert "built for paddlepaddle-gpu 3.3.1" in check.detail and "setup_gpu.sh" in check.fix


def test_doctor_names_the_erniekit_commit_and_its_snapshot(monkeypatch):
    from ernie_ops.recipe.schema import LATEST, latest_version, load_schema

    commit = load_schema(LATEST).commit
    check = _versions(monkeypatch, {"paddlepaddle": "3.3.1", "erniekit": "1.4.0"}, commit)
    assert check.status == "info" and check.data["documented_pair"] is None  # no FastDeploy here
    assert f"source at {commit[:12]}" in check.detail
    assert check.data["schema_snapshot"] == latest_version()


def test_doctor_on_this_machine_reports_what_is_installed():
    from ernie_ops.doctor import check_versions, dist_version

    (check,) = check_versions()
    for found in (dist_version("paddlepaddle-gpu", "paddlepaddle"), dist_version("erniekit")):
        if found:
            assert f"{found[0]} {found[1]}" in check.detail
