"""The vLLM engine (serve/backends/vllm.py): every shipped serve profile renders a vLLM command whose
every flag and value is in the flag table of the named vLLM release, or a clear refusal where vLLM
has no equivalent; the Paddle-layout refusal; the `engine:` / `--engine` name and its deprecated
alias `backend:` / `--backend`; the planner's vLLM memory model."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from polling import free_port

import ernie_ops.serve
from ernie_ops.cli.main import main
from ernie_ops.errors import UserError
from ernie_ops.serve import profile as profile_module
from ernie_ops.serve.backends import vllm
from ernie_ops.serve.planner import plan_serve
from ernie_ops.serve.preflight import Target
from ernie_ops.serve.profile import load_profile

REPO = Path(__file__).resolve().parent.parent
PROFILES = sorted((REPO / "recipes" / "serve").glob("*.yaml"))
TABLE = vllm.table()

# what each shipped profile gives with vLLM: None renders a command; else words of the refusal
EXPECTED_REFUSAL = {
    "ERNIE-4.5-0.3B_bf16_1x24G.yaml": "is the Paddle layout of the model",
    "ERNIE-4.5-21B-A3B-Thinking_wint4_1x80G.yaml": "quantization wint4",
    "ERNIE-4.5-21B-A3B_wint4_1x80G.yaml": "quantization wint4",
    "ERNIE-4.5-21B-A3B_wint8_1x80G.yaml": "quantization wint8",
    "ERNIE-4.5-300B-A47B_wint4_4x80G.yaml": "quantization wint4",
    "ERNIE-4.5-300B-A47B_wint8_8x80G.yaml": "quantization wint8",
    "ERNIE-4.5-VL-28B-A3B-Thinking_wint8_1x80G.yaml": "quantization wint8",
    "ERNIE-4.5-VL-28B-A3B_wint4_1x48G.yaml": "quantization wint4",
    "ERNIE-4.5-VL-424B-A47B_wint4_8x80G.yaml": "quantization wint4",
}


def options(argv: list[str]) -> list[str]:
    """The options after `vllm serve MODEL`."""
    assert argv[:2] == ["vllm", "serve"] and not argv[2].startswith("-")
    return argv[3:]


def assert_in_table(args: list[str]) -> None:
    """Independently of the builder's own check: each flag is the release's, with a typed value."""
    flags = TABLE["flags"]
    negatives = {f"--no-{f[2:]}": f for f, s in flags.items() if s["type"] == "bool_optional"}
    i = 0
    while i < len(args):
        spec = flags[negatives.get(args[i], args[i])]
        if spec["type"] in ("switch", "bool_optional"):
            i += 1
            continue
        value = args[i + 1]
        assert not value.startswith("--"), args[i]
        if spec["type"] == "int":
            int(value)
        elif spec["type"] == "float":
            float(value)
        elif spec["type"] == "json":
            assert isinstance(json.loads(value), dict)
        elif spec["type"] == "choice":
            assert value in spec["choices"]
        i += 2


def test_the_table_names_its_release_and_has_what_the_builder_uses():
    source = TABLE["source"]
    assert source["release"] == "0.34.0" and len(source["commit"]) >= 7 and len(source["sha256"]) == 64
    assert TABLE["command"] == ["vllm", "serve"] and TABLE["api_key_env"] == "VLLM_API_KEY"
    assert "ernie45" in TABLE["reasoning_parsers"] and "ernie45" in TABLE["tool_parsers"]
    assert set(TABLE["ernie_architectures"]) == {
        "Ernie4_5ForCausalLM",
        "Ernie4_5_MoeForCausalLM",
        "Ernie4_5_VLMoeForConditionalGeneration",
    }
    assert {"fp8_per_block", "fp8_per_tensor"} <= set(TABLE["online_quantization"])
    flags = TABLE["flags"]
    assert (
        flags["--enable-prefix-caching"]["type"]
        == flags["--enable-auto-tool-choice"]["type"]
        == "bool_optional"
    )
    assert flags["--limit-mm-per-prompt"]["type"] == flags["--mm-processor-kwargs"]["type"] == "json"
    assert "bfloat16" in flags["--dtype"]["choices"] and flags["--api-key"]["type"] == "list"


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_shipped_profile_renders_a_checked_vllm_command_or_a_clear_refusal(path):
    profile = load_profile(path)
    profile.engine = "vllm"
    expected = EXPECTED_REFUSAL.get(path.name)
    if expected is None:
        assert path.name.endswith("_vllm.yaml"), (
            "a new profile: add it to EXPECTED_REFUSAL or ship it for vLLM"
        )
        argv = vllm.BACKEND.command(profile).argv
        args = options(argv)
        assert_in_table(args)
        assert args[args.index("--port") + 1] == str(profile.port)
        assert "--api-key" not in args and "--generation-config" in args
        return
    with pytest.raises(UserError) as err:
        vllm.BACKEND.command(profile)
    assert expected in str(err.value)
    if expected.startswith("quantization"):
        assert "FastDeploy" in err.value.hint and "block_wise_fp8" in err.value.hint


def test_the_vllm_profiles_map_parsers_fp8_and_multimodal_limits():
    shown = {
        p.name: vllm.BACKEND.command(load_profile(p)).argv for p in PROFILES if p.name.endswith("_vllm.yaml")
    }
    assert len(shown) == 4
    fp8 = options(shown["ERNIE-4.5-21B-A3B_fp8_1x80G_vllm.yaml"])
    assert fp8[fp8.index("--quantization") + 1] == "fp8_per_block" and "--dtype" in fp8
    thinking = options(shown["ERNIE-4.5-21B-A3B-Thinking_bf16_1x80G_vllm.yaml"])
    assert thinking[thinking.index("--reasoning-parser") + 1] == "ernie45"
    assert (
        thinking[thinking.index("--tool-call-parser") + 1] == "ernie45"
        and "--enable-auto-tool-choice" in thinking
    )
    vl = options(shown["ERNIE-4.5-VL-28B-A3B-Thinking_bf16_1x80G_vllm.yaml"])
    assert json.loads(vl[vl.index("--limit-mm-per-prompt") + 1]) == {"image": 4, "video": 1}
    assert json.loads(vl[vl.index("--mm-processor-kwargs") + 1]) == {"max_pixels": 4816896}
    assert "--tool-call-parser" not in vl


def test_what_vllm_has_no_equivalent_for_is_refused(tmp_path):
    path = REPO / "recipes" / "serve" / "ERNIE-4.5-VL-28B-A3B-Thinking_bf16_1x80G_vllm.yaml"
    profile = load_profile(path, ["tool_call_parser=ernie-45-vl-thinking"])
    with pytest.raises(UserError, match="does not support tool calls for ERNIE-4"):
        vllm.BACKEND.command(profile)
    profile = load_profile(path, ["mm_processor_kwargs={video_fps: 2}"])
    with pytest.raises(UserError, match="video_fps is a FastDeploy processor key"):
        vllm.BACKEND.command(profile)
    profile = load_profile(
        path, ["quantization={quantization: mix_quant, dense_quant_type: wint8, moe_quant_type: wint4}"]
    )
    with pytest.raises(UserError, match="no online weight-only counterpart"):
        vllm.BACKEND.command(profile)
    with pytest.raises(UserError, match=r"does not exist in vLLM 0\.34\.0"):
        vllm.check_command(["--enable-mm"])  # FastDeploy's, not vLLM's
    with pytest.raises(UserError, match="is not an int"):
        vllm.check_command(["--max-num-seqs", "many"])
    with pytest.raises(UserError, match="has no reasoning-parser 'ernie-x1'"):
        vllm.check_command(["--reasoning-parser", "ernie-x1"])  # FastDeploy's name given as is


def test_the_api_key_goes_in_the_environment_never_in_argv(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "s3cret")
    profile = load_profile(
        REPO / "recipes" / "serve" / "ERNIE-4.5-0.3B_bf16_1x24G_vllm.yaml", ["api_key_env=MY_KEY"]
    )
    shown = vllm.BACKEND.command(profile)
    assert "VLLM_API_KEY" not in shown.env  # --print-command reads no secret
    started = vllm.BACKEND.command(profile, python=sys.executable)
    assert started.env["VLLM_API_KEY"] == "s3cret" and "s3cret" not in " ".join(started.argv)
    assert started.argv[:4] == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    assert "VLLM_API_KEY=***" in started.shown() and "s3cret" not in started.shown()


def _checkpoint(path: Path, arch: str, tensors: list[str]) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": [arch], "num_hidden_layers": 2}))
    header = json.dumps(
        {n: {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]} for n in tensors}
    ).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")
    return path


def test_a_paddle_checkpoint_is_refused_with_the_export_command(tmp_path, capsys):
    paddle = _checkpoint(
        tmp_path / "run" / "checkpoint", "Ernie4_5_MoeForCausalLM", ["ernie.layers.0.mlp.gate.weight"]
    )
    target = Target(paddle, None, False, True, run_dir=tmp_path / "run")
    with pytest.raises(UserError) as err:
        vllm.BACKEND.check_layout(target)
    assert "Paddle checkpoint (ERNIEKit's tensor names: ernie.*)" in str(err.value)
    assert err.value.hint.startswith(f"ernie-ops export {tmp_path / 'run'} --format hf")
    dense = _checkpoint(tmp_path / "dense", "Ernie4_5_ForCausalLM", ["lm_head.weight"])  # Paddle's dense name
    assert "is not one of vLLM's ERNIE 4.5 architectures" in str(vllm.checkpoint_problem(dense))
    hf = _checkpoint(tmp_path / "hf", "Ernie4_5_MoeForCausalLM", ["model.layers.0.mlp.gate.weight"])
    assert vllm.checkpoint_problem(hf) is None
    # the CLI says the same for a local Paddle checkpoint given to --print-command
    assert main(["serve", str(paddle), "--engine", "vllm", "--print-command"]) == 2
    assert "--format hf" in capsys.readouterr().err
    assert main(["serve", str(hf), "--engine", "vllm", "--port", "8299", "--print-command"]) == 0
    assert capsys.readouterr().out.split()[1:4] == ["vllm", "serve", str(hf.resolve())]


def test_without_vllm_the_backend_says_how_to_install_it(monkeypatch, tmp_path):
    from ernie_ops.train import launch

    hf = _checkpoint(tmp_path / "hf", "Ernie4_5ForCausalLM", ["model.embed_tokens.weight"])
    profile = ernie_ops.serve.load(str(hf), ["engine=vllm", "port=8297"])
    target = vllm.BACKEND.resolve(profile)
    monkeypatch.setattr(launch, "detect_gpus", lambda: [0])
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert vllm.BACKEND.unavailable() == f"vLLM is not installed ({vllm.INSTALL})"
    with pytest.raises(UserError, match="pip install vllm"):
        vllm.BACKEND.preflight(profile, target)  # the layout, the command and the port passed first
    monkeypatch.setattr(launch, "detect_gpus", lambda: [])
    assert vllm.BACKEND.unavailable() == "no GPU"
    with pytest.raises(UserError, match="no GPU") as err:
        vllm.BACKEND.preflight(profile, target)
    assert "--engine paddle" in err.value.hint


def test_engine_is_the_key_and_backend_its_deprecated_alias(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(profile_module, "_warned", set())
    old = tmp_path / "old.yaml"
    old.write_text("backend: paddle\nmodel: m\n", encoding="utf-8")
    assert load_profile(old).engine == "paddle" and load_profile(old).backend == "paddle"
    err = capsys.readouterr().err
    assert err.count("`backend:` is deprecated, call it `engine:`") == 1 and f"{old}:1" in err
    both = tmp_path / "both.yaml"
    both.write_text("backend: paddle\nengine: vllm\nmodel: m\n", encoding="utf-8")
    with pytest.raises(UserError, match="backend: says 'paddle' and engine: says 'vllm'"):
        load_profile(both)
    typo = tmp_path / "typo.yaml"
    typo.write_text("engine: vlm\nmodel: m\n", encoding="utf-8")
    with pytest.raises(
        UserError, match=r"(?s)typo.yaml:1: error: engine: 'vlm' is not one of.*did you mean 'vllm'"
    ):
        load_profile(typo)

    calls = []
    monkeypatch.setattr(ernie_ops.serve, "start", lambda profile, **k: calls.append(profile) or 0)
    assert main(["serve", str(tmp_path), "--backend", "paddle", "--port", "8196"]) == 0
    assert main(["serve", str(tmp_path), "--backend", "paddle", "--port", "8196"]) == 0
    assert [p.engine for p in calls] == ["paddle", "paddle"]
    assert capsys.readouterr().err.count("--backend is deprecated, use --engine paddle") == 1
    assert main(["serve", str(tmp_path), "--engine", "paddle", "--backend", "vllm"]) == 2
    assert main(["serve", "status", "--engine", "vllm"]) == 2  # no engine for status


def test_no_shipped_profile_or_pipeline_uses_the_old_key():
    for path in [*PROFILES, *(REPO / "recipes" / "pipelines").glob("*.yaml")]:
        text = path.read_text(encoding="utf-8")
        assert "\nbackend:" not in text, path


def test_the_planner_uses_vllms_memory_model_and_prints_its_assumptions():
    fd = plan_serve("ERNIE-4.5-21B-A3B", "H800-80G", quantization="bf16", max_model_len=32768, max_num_seqs=4)
    v = plan_serve(
        "ERNIE-4.5-21B-A3B",
        "H800-80G",
        quantization="bf16",
        max_model_len=32768,
        max_num_seqs=4,
        engine="vllm",
    )
    assert (fd.block_size, v.block_size) == (64, 16) and v.kv_capacity_tokens % 16 == 0
    assert v.weights_gib == pytest.approx(fd.weights_gib)  # the same bf16 weights
    assert v.profiled_tokens == 8192  # vLLM's server default on an 80 GB Hopper, not max_model_len
    text = v.explain()
    assert "vLLM" in text and "assumes: KV cache in the model dtype" in text and "blocks of 16 tokens" in text
    fp8 = plan_serve("ERNIE-4.5-21B-A3B", "H800-80G", quantization="fp8", max_model_len=32768, engine="vllm")
    assert fp8.quantization == "block_wise_fp8" and fp8.weights_gib < v.weights_gib * 0.6
    assert "fp8_per_block" in fp8.explain()
    tiny_batch = plan_serve(
        "ERNIE-4.5-21B-A3B", "A100-80G", quantization="bf16", engine="vllm", max_num_batched_tokens=512
    )
    assert tiny_batch.profiled_tokens == 512
    with pytest.raises(UserError, match="no online equivalent of wint4"):
        plan_serve("ERNIE-4.5-21B-A3B", "H800-80G", quantization="wint4", engine="vllm")
    auto = plan_serve("ERNIE-4.5-300B-A47B", "H800-80G", engine="vllm", max_model_len=8192)
    assert auto.quantization in ("bf16", "block_wise_fp8")


def test_the_plan_cli_takes_the_engine(capsys):
    args = ["plan", "serve", "--model", "ERNIE-4.5-0.3B", "--gpu", "A10-24G", "--engine", "vllm"]
    assert main([*args, "--quantization", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "vLLM" in out and "assumes:" in out
    assert main([*args, "--quantization", "wint8"]) == 2


@pytest.mark.gpu
def test_vllm_serves_the_exported_tiny_model(tiny_dense, tmp_path):
    """On a GPU node with vLLM installed: export the tiny model to the transformers layout, serve it
    with vLLM (detached), ask it for a few tokens, stop it. Skipped without a GPU or without vLLM."""
    import importlib.util

    import httpx

    if importlib.util.find_spec("vllm") is None:
        pytest.skip(f"vLLM is not installed ({vllm.INSTALL})")
    exported = tmp_path / "tiny-hf"
    exe = shutil.which("ernie-ops", path=str(Path(sys.executable).parent))
    cli = [exe] if exe else [sys.executable, "-m", "ernie_ops"]
    done = subprocess.run(
        [*cli, "export", str(tiny_dense), "--format", "hf", "--out", str(exported)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    port = free_port()
    args = ["--engine", "vllm", "--port", str(port), "--set", "max_model_len=256", "--set", "max_num_seqs=4"]
    started = subprocess.run(
        [*cli, "serve", str(exported), *args, "--set", "gpu_memory_utilization=0.3", "--detach"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"model": str(exported.resolve()), "prompt": "hello", "max_tokens": 4},
            timeout=120,
        )
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] is not None
    finally:
        subprocess.run([*cli, "serve", "stop", "--port", str(port)], capture_output=True, timeout=300)


# --- the extractor: the next release is one command ------------------------------------------------

FAKE_VLLM = {
    "vllm/_version.py": "__version__ = version = '9.9.0'\n__commit_id__ = commit_id = 'gabc1234'\n",
    "vllm/envs.py": 'environment_variables = {"VLLM_API_KEY": lambda: None}\n',
    "vllm/config/model.py": (
        "from typing import Literal\n"
        'ModelDType = Literal["auto", "bfloat16"]\n'
        "class Options(dict[str, int]):\n    pass\n"
        "@config\nclass ModelConfig:\n"
        "    dtype: ModelDType = 'auto'\n"
        "    max_model_len: int | None = None\n"
        "    quantization: str | None = None\n"
        "    enforce_eager: bool = False\n"
        "    hf_overrides: dict[str, Any] | None = None\n"
        "    limits: Options = Field(default_factory=Options)\n"
        "    served_model_name: str | list[str] | None = None\n"
        "    speculative: 'SpecConfig | None' = None\n"
        "@config\nclass SpecConfig:\n    method: str = ''\n"
    ),
    "vllm/engine/arg_utils.py": (
        "class EngineArgs:\n"
        "    @staticmethod\n"
        "    def add_cli_args(parser):\n"
        "        model_kwargs = get_kwargs(ModelConfig)\n"
        "        group = parser.add_argument_group()\n"
        '        group.add_argument("--dtype", **model_kwargs["dtype"])\n'
        '        group.add_argument("--max-model-len", **model_kwargs["max_model_len"])\n'
        '        group.add_argument("--quantization", "-q", **model_kwargs["quantization"])\n'
        '        group.add_argument("--enforce-eager", **model_kwargs["enforce_eager"])\n'
        '        group.add_argument("--hf-overrides", **model_kwargs["hf_overrides"])\n'
        '        group.add_argument("--limit-mm-per-prompt", **model_kwargs["limits"])\n'
        '        group.add_argument("--served-model-name", **model_kwargs["served_model_name"])\n'
        '        group.add_argument("--speculative-config", **model_kwargs["speculative"])\n'
        '        group.add_argument("--seed", type=int, default=0)\n'
    ),
    "vllm/entrypoints/common/cli_args.py": (
        "@config\nclass BaseFrontendArgs:\n"
        "    tool_call_parser: str | None = None\n"
        "    enable_auto_tool_choice: bool = False\n"
        "@config\nclass FrontendArgs(BaseFrontendArgs):\n"
        "    host: str | None = None\n"
        "    port: int = 8000\n"
        "    api_key: list[str] | None = None\n"
        "def make_arg_parser(parser):\n"
        '    parser.add_argument("--headless", action="store_true")\n'
    ),
    "vllm/reasoning/__init__.py": '_REASONING = {"ernie45": ("ernie45_reasoning_parser", "P")}\n',
    "vllm/tool_parsers/__init__.py": '_TOOLS = {"ernie45": ("ernie45_tool_parser", "T")}\n',
    "vllm/model_executor/layers/quantization/__init__.py": 'QuantizationMethods = Literal["fp8", "awq"]\n',
    "vllm/model_executor/models/registry.py": '_TEXT = {\n    "Ernie4_5ForCausalLM": ("ernie45", "E"),\n}\n',
}


def test_the_extractor_types_flags_as_vllms_get_kwargs_does(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "extract_vllm_flags", REPO / "scripts" / "extract_vllm_flags.py"
    )
    assert spec is not None and spec.loader is not None
    extractor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extractor)
    for rel, text in FAKE_VLLM.items():
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / rel).write_text(text, encoding="utf-8")
    out = tmp_path / "flags.json"
    assert extractor.main([str(tmp_path / "src"), "--out", str(out)]) == 0
    got = json.loads(out.read_text(encoding="utf-8"))
    assert got["source"]["release"] == "9.9.0" and got["source"]["commit"] == "abc1234"
    assert (got["api_key_env"], got["reasoning_parsers"], got["tool_parsers"]) == (
        "VLLM_API_KEY",
        ["ernie45"],
        ["ernie45"],
    )
    assert got["quantization_methods"] == ["fp8", "awq"] and got["ernie_architectures"] == [
        "Ernie4_5ForCausalLM"
    ]
    kinds = {flag: spec["type"] for flag, spec in got["flags"].items()}
    assert kinds == {
        "--api-key": "list",
        "--dtype": "choice",
        "--enable-auto-tool-choice": "bool_optional",
        "--enforce-eager": "bool_optional",
        "--headless": "switch",
        "--hf-overrides": "json",
        "--host": "str",
        "--limit-mm-per-prompt": "json",  # a dict subclass is a CLI dict
        "--max-model-len": "int",
        "--port": "int",
        "--quantization": "str",
        "--seed": "int",
        "--served-model-name": "list",
        "--speculative-config": "json",  # a config dataclass
        "--tool-call-parser": "str",
    }
    assert got["flags"]["--dtype"]["choices"] == ["auto", "bfloat16"]
    assert got["flags"]["--quantization"]["aliases"] == ["-q"] and got["flags"]["--port"]["default"] == "8000"


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_the_exported_tiny_model_is_what_vllm_reads_and_the_paddle_one_is_refused(
    kind, tiny_dense, tiny_moe, tmp_path, capsys
):
    """The real exporter's output (`ernie-ops export --format hf`) passes the layout check and renders
    a checked command; the ERNIEKit checkpoint it came from is refused with the export command (the
    MoE one by its tensor names: Paddle and transformers share its architecture name)."""
    from ernie_ops.train.hf_format import convert

    paddle = tiny_dense if kind == "dense" else tiny_moe
    exported = tmp_path / f"tiny-{kind}-hf"
    convert(paddle, exported, "hf")
    assert vllm.checkpoint_problem(exported) is None
    assert vllm.checkpoint_problem(paddle) == "it is a Paddle checkpoint (ERNIEKit's tensor names: ernie.*)"
    assert main(["serve", str(paddle), "--engine", "vllm", "--print-command"]) == 2
    assert f"ernie-ops export {paddle.resolve()} --format hf" in capsys.readouterr().err
    assert (
        main(["serve", str(exported), "--engine", "vllm", "--set", "max_model_len=512", "--print-command"])
        == 0
    )
    argv = capsys.readouterr().out.split()[1:]
    assert argv[:3] == ["vllm", "serve", str(exported.resolve())]
    assert_in_table(argv[3:])


def test_a_run_directory_serves_its_transformers_export(tmp_path, capsys):
    from ernie_ops.train.record import RunRecord

    run = tmp_path / "runs" / "sft-1"
    paddle = _checkpoint(run / "export", "Ernie4_5_MoeForCausalLM", ["ernie.layers.0.mlp.gate.weight"])
    record = RunRecord(name="sft-1", run_dir=str(run), recipe_source="r.yaml", status="finished")
    record.exported = str(paddle)
    record.save()
    assert main(["serve", str(run), "--engine", "vllm", "--print-command"]) == 2  # only the Paddle export
    assert f"ernie-ops export {run} --format hf" in capsys.readouterr().err
    hf = _checkpoint(run / "export-hf", "Ernie4_5_MoeForCausalLM", ["model.layers.0.mlp.gate.weight"])
    record.exports["hf"] = {"path": str(hf), "from": str(paddle), "verified": True}
    record.save()
    profile = ernie_ops.serve.load(str(run), ["engine=vllm"])
    target = vllm.BACKEND.resolve(profile)
    assert (target.model_dir, target.run_dir, target.is_moe) == (hf.resolve(), run, False)
    assert main(["serve", str(run), "--engine", "vllm", "--print-command"]) == 0
    assert capsys.readouterr().out.split()[1:4] == ["vllm", "serve", str(hf.resolve())]
