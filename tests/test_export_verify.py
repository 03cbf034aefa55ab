"""`ernie-ops export` and `ernie-ops verify` on runs the real ERNIEKit trained, and on checkpoints
broken in the ways that make a server fail: a tensor missing from its shard, a wrong shape, a
PyTorch config, no chat template, a missing layer, a truncated shard."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ernie_ops.train.record import RunRecord
from ernie_ops.train.verify import read_safetensors_header, verify_checkpoint

TOKENS = [3, 17, 42, 99, 200, 512]


# ---------------------------------------------------------------------------------------------
# runs trained by ERNIEKit, laid out as `ernie-ops train` leaves them


def make_run(repo: Path, recipe: str, tiny: Path, run_dir: Path, fine_tuning: str) -> Path:
    out = run_dir / "output"
    overrides = {"model_name_or_path": str(tiny), "output_dir": str(out)}
    # `erniekit train` assumes a GPU; the launcher module runs the same workflow in one CPU process
    cmd = [
        sys.executable,
        "-m",
        "erniekit.launcher",
        "train",
        recipe,
        *(f"{k}={v}" for k, v in overrides.items()),
    ]
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    resolved = yaml.safe_load((repo / recipe).read_text())
    resolved.update(overrides)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    RunRecord(
        name=run_dir.name,
        run_dir=str(run_dir),
        recipe_source=str(repo / recipe),
        status="succeeded",
        fine_tuning=fine_tuning,
        model_name_or_path=str(tiny),
        output_dir=str(out),
    ).save()
    return run_dir


def copy_run(run_dir: Path, dest: Path) -> Path:
    """A copy of a run whose record points at the copy's own output."""
    shutil.copytree(run_dir, dest, symlinks=True)
    record = RunRecord.load(dest)
    record.run_dir, record.output_dir = str(dest), str(dest / "output")
    record.save()
    return dest


@pytest.fixture(scope="module")
def lora_run(repo, tiny_dense, tmp_path_factory) -> Path:
    return make_run(
        repo, "recipes/tiny/sft_lora_cpu.yaml", tiny_dense, tmp_path_factory.mktemp("lora-run"), "LoRA"
    )


@pytest.fixture(scope="module")
def full_run(repo, tiny_dense, tmp_path_factory) -> Path:
    return make_run(
        repo, "recipes/tiny/sft_cpu.yaml", tiny_dense, tmp_path_factory.mktemp("full-run"), "Full"
    )


@pytest.fixture(scope="module")
def lora_export(lora_run, cli) -> tuple[Path, subprocess.CompletedProcess]:
    return lora_run, cli("export", str(lora_run), "--json")


def logits(model_dir: Path, adapter: Path | None = None):
    import paddle
    from ernie.modeling_moe import Ernie4_5_MoeForCausalLM

    model = Ernie4_5_MoeForCausalLM.from_pretrained(str(model_dir), moe_group="dummy")
    if adapter is not None:
        from paddleformers.peft import LoRAModel

        model = LoRAModel.from_pretrained(model, str(adapter))  # base + LoRA, unmerged
    model.eval()
    n = len(TOKENS)
    mask = paddle.tril(paddle.ones([n, n], dtype="bool"))[None, None]
    with paddle.no_grad():
        return model(
            input_ids=paddle.to_tensor([TOKENS]), attention_mask=mask, return_dict=True
        ).logits.numpy()


# ---------------------------------------------------------------------------------------------
# export


@pytest.mark.slow
def test_lora_run_exports_a_merged_verified_checkpoint(lora_export, cli):
    run_dir, result = lora_export
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    export = run_dir / "export"
    assert out["exported"] == str(export) and out["merged"] is True
    assert {c["name"]: c["status"] for c in out["verify"]["checks"]}["forward"] == "ok"
    for name in (
        "model-00001-of-00001.safetensors",
        "model.safetensors.index.json",
        "config.json",
        "generation_config.json",  # ERNIEKit's export leaves it out; export adds it
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        assert (export / name).is_file(), name
    assert (export / "model-00001-of-00001.safetensors").stat().st_mode & 0o044  # not 0600
    record = RunRecord.load(run_dir)
    assert record.exported == str(export) and record.verified is True
    assert record.checkpoint == str(run_dir / "output")  # the adapter: top level of output_dir
    assert "Successfully finished merging LoRA model" in (run_dir / "logs" / "export.log").read_text()
    assert not list(run_dir.glob(".export-*")), "staging left behind"
    assert not (run_dir / "output" / "export").exists()  # ERNIEKit's own location stays clean

    again = cli("export", str(run_dir))  # an export is not replaced without --force
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    verify = cli("verify", str(run_dir), "--no-forward")  # a run directory stands for its export
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert str(export) in verify.stdout and "checkpoint verified" in verify.stdout


@pytest.mark.slow
def test_merged_logits_equal_base_plus_lora(lora_export, tiny_dense):
    import numpy as np

    run_dir, result = lora_export
    assert result.returncode == 0, result.stderr[-3000:]
    merged = logits(run_dir / "export")
    base = logits(tiny_dense)
    unmerged = logits(tiny_dense, adapter=run_dir / "output")
    assert np.abs(merged - base).max() > 1e-3, "the export is the base model: nothing was merged"
    assert np.abs(merged - unmerged).max() < 1e-4


@pytest.mark.slow
def test_export_replaces_with_force(lora_export, cli, tmp_path):
    run_dir, result = lora_export
    assert result.returncode == 0, result.stderr[-3000:]
    run = copy_run(run_dir, tmp_path / "run")
    (run / "export" / "stale-marker").write_text("old")
    redo = cli("export", str(run), "--force", "--no-forward")
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert not (run / "export" / "stale-marker").exists()
    assert (run / "export" / "model-00001-of-00001.safetensors").is_file()
    assert not list(run.glob(".export-*"))


@pytest.mark.slow
def test_full_run_export_points_at_the_final_checkpoint(full_run, cli):
    result = cli("export", str(full_run), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    output = full_run / "output"
    assert out["exported"] == str(output) and out["merged"] is False
    assert all(c["status"] == "ok" for c in out["verify"]["checks"]), out["verify"]
    assert not (full_run / "export").exists()  # nothing copied
    record = RunRecord.load(full_run)
    assert record.exported == record.checkpoint == str(output) and record.verified is True
    config = json.loads((output / "config.json").read_text())
    # ERNIEKit's saved config lacks dtype and names the dense model by its MoE class
    assert config["dtype"] == "float32" and config["architectures"] == ["Ernie4_5_ForCausalLM"]


@pytest.mark.slow
def test_full_run_without_top_level_weights_uses_the_highest_checkpoint(full_run, cli, tmp_path):
    run = copy_run(full_run, tmp_path / "run")
    for weights in [*(run / "output").glob("*.safetensors"), *(run / "output").glob("*.index.json")]:
        weights.unlink()
    (run / "output" / "checkpoint-2").mkdir()  # an older, empty one must not win
    result = cli("export", str(run), "--json", "--no-forward")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["exported"] == str(run / "output" / "checkpoint-4")


def break_adapter_weights(output: Path) -> None:
    adapter = [*output.glob("peft_model*.safetensors"), *output.glob("*.pdparams")]
    assert adapter
    for weights in adapter:  # the unified (safetensors) or the legacy (pdparams) adapter layout
        weights.write_bytes(b"not a tensor file")


def break_adapter_config(output: Path) -> None:
    (output / "lora_config.json").write_text("{not json")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        # ERNIEKit's merge workers swallow the error: it exits 0 with an index naming a shard it
        # never wrote, and only the output tells
        (break_adapter_weights, "error: ERNIEKit's export exited 0 but its output is incomplete"),
        (break_adapter_config, "error: ERNIEKit's export exited with status 1"),
    ],
)
def test_export_failing_inside_erniekit_leaves_no_export(lora_run, cli, tmp_path, damage, message):
    run = copy_run(lora_run, tmp_path / "run")
    shutil.rmtree(run / "export", ignore_errors=True)
    damage(run / "output")
    before = (run / "run.json").read_text()
    result = cli("export", str(run), "--force")
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr
    assert "nothing was exported" in result.stderr and "export.log" in result.stderr
    assert not (run / "export").exists()
    assert not list(run.glob(".export-*"))
    assert (run / "logs" / "export.log").is_file()
    assert (run / "run.json").read_text() == before  # the record is untouched


def _run_record(run_dir: Path, **fields) -> Path:
    (run_dir / "output").mkdir(parents=True)
    base = dict(name="r", run_dir=str(run_dir), recipe_source="x.yaml", output_dir=str(run_dir / "output"))
    RunRecord(**{**base, **fields}).save()
    return run_dir


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"status": "failed", "failure": "loss is NaN"}, "did not succeed (status failed: loss is NaN)"),
        ({"status": "running"}, "did not succeed (status owner gone)"),  # recorded running, nobody holds it
        ({"status": "succeeded", "fine_tuning": "Full"}, "no checkpoint in"),
    ],
)
def test_export_of_an_unfinished_run_is_a_user_error(cli, tmp_path, fields, message):
    run = _run_record(tmp_path / "run", **fields)
    result = cli("export", str(run))
    assert result.returncode == 2
    assert message in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_of_a_non_run_directory_is_a_user_error(cli, tmp_path):
    result = cli("export", str(tmp_path))
    assert result.returncode == 2
    assert "is not a run directory (no run.json)" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr


def test_lora_export_without_the_base_model_is_a_user_error(cli, tmp_path):
    run = _run_record(tmp_path / "run", status="succeeded", model_name_or_path=str(tmp_path / "gone"))
    (run / "output" / "lora_config.json").write_text("{}")
    (run / "output" / "lora_model_state.pdparams").write_bytes(b"x")
    result = cli("export", str(run))
    assert result.returncode == 2
    assert "is not a local checkpoint directory" in result.stderr and "--base-model" in result.stderr


# ---------------------------------------------------------------------------------------------
# verify: a sharded copy of the tiny model, then one thing broken per test


def shard(checkpoint: Path, dest: Path) -> Path:
    """A copy with the weights in two shards + an index (the layout of every public checkpoint)."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(checkpoint, dest)
    tensors = load_file(str(dest / "model.safetensors"))
    (dest / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(dest / file), metadata={"format": "np"})
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index))
    return dest


def rewrite_shard(checkpoint: Path, tensor: str, change) -> None:
    """Rewrite the shard holding `tensor`, `change` mapping its tensors dict to the new one."""
    from safetensors.numpy import load_file, save_file

    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    file = checkpoint / index["weight_map"][tensor]
    save_file(change(load_file(str(file))), str(file), metadata={"format": "np"})


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def statuses(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def detail(report, name: str) -> str:
    return next(c.detail for c in report.checks if c.name == name)


QKV = "ernie.layers.1.self_attn.qkv_proj.weight"


@pytest.fixture
def sharded(tiny_dense, tmp_path) -> Path:
    return shard(tiny_dense, tmp_path / "ckpt")


def test_intact_sharded_checkpoint_passes(sharded):
    report = verify_checkpoint(sharded, forward=False)
    assert report.ok, report.to_dict()
    assert statuses(report)["forward"] == "skip"
    assert "15 tensors in 2 file(s), float32" in detail(report, "weights")


@pytest.mark.slow
def test_verify_cli_runs_the_forward_pass_and_exits_0(sharded, cli):
    result = cli("verify", str(sharded), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["forward"]["status"] == "ok"
    assert "logits [1, 8, 1024], finite" in checks["forward"]["detail"]


def test_tensor_missing_from_its_shard_fails(sharded, cli):
    rewrite_shard(sharded, QKV, lambda t: {k: v for k, v in t.items() if k != QKV})
    report = verify_checkpoint(sharded, forward=False)
    assert statuses(report)["weights"] == "fail"
    assert "not in their shard" in detail(report, "weights") and QKV in detail(report, "weights")
    result = cli("verify", str(sharded))  # the CLI: a FAIL line and exit 1, the forward pass skipped
    assert result.returncode == 1
    assert "FAIL  weights" in result.stdout and "verification failed: weights" in result.stdout
    assert "skip  forward" in result.stdout


def test_wrong_shape_fails_and_a_transposed_weight_is_named(sharded):
    rewrite_shard(sharded, QKV, lambda t: {**t, QKV: t[QKV].T.copy()})
    report = verify_checkpoint(sharded, forward=False)
    assert statuses(report)["shapes"] == "fail"
    assert f"{QKV} [128, 64], expected [64, 128] (transposed" in detail(report, "shapes")


def test_shape_that_disagrees_with_the_config_fails(sharded):
    edit_json(sharded / "config.json", lambda c: c.update(intermediate_size=96))
    report = verify_checkpoint(sharded, forward=False)
    assert statuses(report)["shapes"] == "fail"
    assert "ernie.layers.0.mlp.up_gate_proj.weight [64, 256], expected [64, 192]" in detail(report, "shapes")


def test_missing_layer_fails(sharded):
    edit_json(sharded / "config.json", lambda c: c.update(num_hidden_layers=3))
    report = verify_checkpoint(sharded, forward=False)
    assert statuses(report)["layers"] == "fail" and "1 of 3 missing: 2" in detail(report, "layers")


def test_torch_dtype_config_fails(sharded):
    edit_json(sharded / "config.json", lambda c: (c.pop("dtype"), c.update(torch_dtype="bfloat16")))
    report = verify_checkpoint(sharded, forward=False)
    assert statuses(report)["paddle config"] == "fail" and "torch_dtype" in detail(report, "paddle config")
    assert [c.name for c in report.failed] == ["paddle config"]


def test_unknown_architecture_fails(sharded):
    edit_json(sharded / "config.json", lambda c: c.update(architectures=["LlamaForCausalLM"]))
    report = verify_checkpoint(sharded, forward=False)
    assert statuses(report)["architecture"] == "fail"


def test_missing_chat_template_fails(sharded):
    edit_json(sharded / "tokenizer_config.json", lambda c: c.pop("chat_template"))
    report = verify_checkpoint(sharded, forward=False)
    assert [c.name for c in report.failed] == ["chat template"]


def test_missing_tokenizer_and_generation_config_fail(sharded):
    (sharded / "tokenizer.model").unlink()
    (sharded / "generation_config.json").unlink()
    report = verify_checkpoint(sharded, forward=False)
    assert {c.name for c in report.failed} == {"tokenizer", "generation_config.json"}
    assert "tokenizer.model" in detail(report, "tokenizer")


def test_truncated_shard_fails(sharded):
    file = sharded / "model-00002-of-00002.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        read_safetensors_header(file)
    report = verify_checkpoint(sharded, forward=False)
    assert statuses(report)["weights"] == "fail" and "truncated" in detail(report, "weights")


def test_missing_shard_fails(sharded):
    (sharded / "model-00001-of-00002.safetensors").unlink()
    report = verify_checkpoint(sharded, forward=False)
    assert "shard model-00001-of-00002.safetensors is missing" in detail(report, "weights")


def test_moe_checkpoint_checks_experts_and_skips_the_forward_pass(tiny_moe, tmp_path):
    report = verify_checkpoint(tiny_moe)
    assert report.ok, report.to_dict()
    assert "GPU-only" in detail(report, "forward") and statuses(report)["forward"] == "skip"
    assert "23 tensors match" in detail(report, "shapes")  # 4 experts, the shared one and the gate
    moe = shutil.copytree(tiny_moe, tmp_path / "moe")
    edit_json(moe / "config.json", lambda c: c.update(moe_num_experts=8))
    assert statuses(verify_checkpoint(moe, forward=False))["shapes"] == "fail"


def test_verify_of_a_missing_directory_is_a_user_error(cli, tmp_path):
    result = cli("verify", str(tmp_path / "nope"))
    assert result.returncode == 2 and "is not a directory" in result.stderr
    assert "Traceback" not in result.stderr
