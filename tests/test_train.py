"""`ernie-ops train`: the launch command, then real ERNIEKit runs on CPU end to end (record, metrics,
checkpoint, export, verify), a run killed and resumed, and runs that must be refused or stopped."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ernie_ops.errors import UserError
from ernie_ops.train import run as train_run
from ernie_ops.train.launch import build_command, launch_env, parse_gpus
from ernie_ops.train.record import RunRecord

# ----------------------------------------------------------------------------------- launch command


def test_cpu_command_is_the_single_process_launcher(tmp_path):
    cmd = build_command(tmp_path / "r.yaml", [], tmp_path / "logs")
    assert cmd == [sys.executable, "-m", "erniekit.launcher", "train", str(tmp_path / "r.yaml")]


@pytest.mark.cpu_stack
def test_one_gpu_uses_paddle_distributed_launch(tmp_path):
    cmd = build_command(tmp_path / "r.yaml", [0], tmp_path / "logs")
    assert cmd[:3] == [sys.executable, "-m", "paddle.distributed.launch"]
    assert cmd[cmd.index("--gpus") + 1] == "0"
    assert cmd[cmd.index("--log_dir") + 1] == str(tmp_path / "logs")
    assert "--master" not in cmd and "--nnodes" not in cmd
    assert cmd[-3].endswith("erniekit/launcher.py") and cmd[-2:] == ["train", str(tmp_path / "r.yaml")]


@pytest.mark.cpu_stack
def test_eight_gpus(tmp_path):
    cmd = build_command(tmp_path / "r.yaml", list(range(8)), tmp_path / "logs")
    assert cmd[cmd.index("--gpus") + 1] == "0,1,2,3,4,5,6,7"


@pytest.mark.cpu_stack
def test_two_nodes_of_eight_gpus(tmp_path):
    cmd = build_command(
        tmp_path / "r.yaml", list(range(8)), tmp_path / "logs", nnodes=2, master="10.0.0.1:8080"
    )
    assert cmd[cmd.index("--master") + 1] == "10.0.0.1:8080"
    assert cmd[cmd.index("--nnodes") + 1] == "2"
    assert cmd.index("--nnodes") < cmd.index("train")


def test_nodes_need_a_master_and_gpus(tmp_path):
    with pytest.raises(UserError, match="--master"):
        build_command(tmp_path / "r.yaml", [0, 1], tmp_path, nnodes=2)
    with pytest.raises(UserError, match="needs GPUs"):
        build_command(tmp_path / "r.yaml", [], tmp_path, nnodes=2)


def test_stale_paddle_variables_are_dropped():
    env = launch_env({"PADDLE_TRAINER_ID": "3", "PADDLE_TRAINERS_NUM": "8", "HOME": "/root"})
    assert "PADDLE_TRAINER_ID" not in env and "PADDLE_TRAINERS_NUM" not in env and env["HOME"] == "/root"
    assert env["FLAGS_set_to_1d"] == "False" and env["PYTHONUNBUFFERED"] == "1"


@pytest.mark.parametrize("text", ["0,0", "a", "", "-1"])
def test_bad_gpu_lists_are_user_errors(text):
    with pytest.raises(UserError):
        parse_gpus(text)


# ----------------------------------------------------------------------------------- real runs


def train(cli, repo, runs, *args, timeout=600):
    return cli("train", *args, "--runs-dir", str(runs), "--gpus", "cpu", cwd=repo, timeout=timeout)


def only_run(runs: Path) -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["sft_cpu", "sft_lora_cpu", "dpo_lora_cpu"])
def test_tiny_recipe_runs_end_to_end_and_exports(recipe, cli, repo, tiny_dense, tmp_path):
    runs = tmp_path / "runs"
    result = train(cli, repo, runs, f"recipes/tiny/{recipe}.yaml", f"model_name_or_path={tiny_dense}")
    assert result.returncode == 0, result.stdout + result.stderr
    run = only_run(runs)
    record = RunRecord.load(run)
    assert (record.status, record.exit_code, record.last_step, record.max_steps) == ("succeeded", 0, 4, 4)
    assert record.versions["erniekit"] and record.versions["paddle"] and record.command
    assert record.data and all(len(d.sha256) == 64 and d.records for d in record.data)
    assert (run / "recipe.yaml").is_file() and (run / "logs" / "train.log").is_file()
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    losses = [m["loss"] for m in metrics(run) if "loss" in m]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    if recipe == "sft_cpu":
        assert losses[-1] < losses[0]  # lr 1e-3 on a 48-example task: the loss moves down
    else:
        assert all(0 < x < 20 for x in losses)
    assert record.checkpoint and Path(record.checkpoint).is_dir()

    exported = cli("export", str(run), cwd=repo, timeout=600)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    record = RunRecord.load(run)
    assert record.verified is True and Path(record.exported).is_dir()
    verified = cli("verify", record.exported, cwd=repo, timeout=300)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.gpu
def test_full_dpo_runs_on_a_gpu(cli, repo, tiny_dense, tmp_path):
    """Full DPO does not run on CPU with ERNIEKit 1.0.1: its trainer wraps the reference model with
    fleet.distributed_model, which needs a distributed (GPU) launch. `ernie-ops check` refuses it on
    device cpu; on a GPU node this test runs it."""
    runs = tmp_path / "runs"
    result = cli(
        "train",
        "recipes/tiny/dpo_lora_cpu.yaml",
        f"model_name_or_path={tiny_dense}",
        "fine_tuning=Full",
        "device=gpu",
        "--gpus",
        "0",
        "--runs-dir",
        str(runs),
        cwd=repo,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_final_step(repo, tiny_dense, tmp_path):
    runs = tmp_path / "runs"
    exe = shutil.which("ernie-ops", path=str(Path(sys.executable).parent))
    args = [
        exe,
        "train",
        "recipes/tiny/sft_cpu.yaml",
        f"model_name_or_path={tiny_dense}",
        "max_steps=300",  # long enough to be interrupted mid-way even when the log arrives in bursts
        "save_steps=5",
        "eval_steps=1000",
        "--runs-dir",
        str(runs),
        "--gpus",
        "cpu",
    ]
    first = subprocess.Popen(args, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        runs_now = [p for p in runs.iterdir()] if runs.is_dir() else []
        # checkpoints land on disk as they are written; the log may arrive in bursts
        done = runs_now and (runs_now[0] / "output" / "checkpoint-10").is_dir()
        if done or first.poll() is not None:
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, out + err
    run = only_run(runs)
    record = RunRecord.load(run)
    assert record.status == "interrupted" and record.last_step < 300
    interrupted_at = record.last_step
    saved = {int(p.name.rsplit("-", 1)[1]) for p in (run / "output").glob("checkpoint-*")}
    # the interrupt may land while a checkpoint is being written: that one is set aside on resume
    complete = {
        step
        for step in saved
        if train_run.checkpoint_complete(run / "output" / f"checkpoint-{step}", training_state=True)
    }

    resumed = subprocess.run(
        [exe, "train", "--resume", str(run)], cwd=repo, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    record = RunRecord.load(run)
    assert record.status == "succeeded" and record.last_step == 300
    (checkpoint,) = record.resumed_from
    resumed_step = int(checkpoint.rsplit("checkpoint-", 1)[1])
    # the last complete checkpoint, not step 0 (the log may lag the checkpoints: one past the last
    # logged step is fine; one cut short by the interrupt is not resumed from)
    assert resumed_step >= 5 and resumed_step == max(complete), (
        resumed_step,
        interrupted_at,
        saved,
        complete,
    )
    steps = [m["step"] for m in metrics(run) if "loss" in m]
    # the first run's steps, then the resumed run's from right after its checkpoint (where the count
    # goes back, or jumps when the log lagged the checkpoint; or straight on when the first run stopped
    # at that checkpoint)
    first = next((i for i in range(1, len(steps)) if steps[i] != steps[i - 1] + 1), resumed_step)
    assert steps[:first] == list(range(1, first + 1)), steps[:40]
    assert first <= max(interrupted_at, resumed_step), (first, interrupted_at, resumed_step)
    assert steps[first:] == list(range(resumed_step + 1, 301)), steps[:40]


def _checkpoint(path: Path, optimizer_index: str | None) -> Path:
    """A unified checkpoint as PaddleFormers writes it: weights and optimizer state in safetensors
    shards named by index files, beside trainer_state.json."""
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    (path / "model-00001-of-00001.safetensors").write_bytes(b"w")
    index = {"metadata": {}, "weight_map": {"embed": "model-00001-of-00001.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    (path / "optimizer-00001-of-00001.safetensors").write_bytes(b"o")
    if optimizer_index is not None:
        (path / "optimizer.safetensors.index.json").write_text(optimizer_index)
    return path


def test_a_checkpoint_cut_short_mid_save_is_not_resumed_from(tmp_path):
    # seen in a CI run: SIGINT while checkpoint-15 was saved left its weights and trainer state
    # beside an empty optimizer index, and PaddleFormers' resume failed parsing it
    from ernie_ops.train.run import checkpoint_complete, set_aside_incomplete

    whole = json.dumps({"weight_map": {"m": "optimizer-00001-of-00001.safetensors"}, "master_weights": {}})
    missing = json.dumps({"weight_map": {"m": "optimizer-00002-of-00002.safetensors"}})
    out = tmp_path / "output"
    cases = {"checkpoint-5": whole, "checkpoint-10": None, "checkpoint-15": "", "checkpoint-20": missing}
    made = {name: _checkpoint(out / name, index) for name, index in cases.items()}
    assert {n: checkpoint_complete(p) for n, p in made.items()} == {
        "checkpoint-5": True,
        "checkpoint-10": True,  # no optimizer index (weights only): nothing to contradict
        "checkpoint-15": False,
        "checkpoint-20": False,
    }
    assert sorted(set_aside_incomplete(out)) == ["checkpoint-15", "checkpoint-20"]
    assert (out / "checkpoint-15.incomplete").is_dir() and not (out / "checkpoint-15").exists()

    # resuming needs the optimizer and scheduler: seen in a CI run, SIGINT after the weights, trainer
    # state and RNG state of checkpoint-10 were written and before its optimizer, and the resume failed
    # with "Can't find a optimizer index"
    (made["checkpoint-5"] / "scheduler.pdparams").write_bytes(b"s")
    assert checkpoint_complete(made["checkpoint-5"], training_state=True)
    assert checkpoint_complete(made["checkpoint-10"]) and not checkpoint_complete(made["checkpoint-10"], True)
    assert set_aside_incomplete(out, training_state=True) == ["checkpoint-10"]


def test_a_run_whose_every_example_is_skipped_is_stopped_not_hung(cli, repo, tiny_dense, tmp_path):
    runs = tmp_path / "runs"
    start = time.monotonic()
    # every record is longer than 16 tokens: ERNIEKit skips each one and would loop forever
    result = train(
        cli,
        repo,
        runs,
        "recipes/tiny/sft_cpu.yaml",
        f"model_name_or_path={tiny_dense}",
        "max_seq_len=16",
        "--stall-timeout",
        "300",
    )
    assert result.returncode == 1
    assert time.monotonic() - start < 200
    assert "skipped" in result.stderr and "data lint" in result.stderr
    record = RunRecord.load(only_run(runs))
    assert record.status == "stopped" and "skipped" in record.failure


def test_a_dataset_the_lint_rejects_is_refused_before_launch(cli, repo, tiny_dense, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src": ["hi"], "tgt": [""]}\n{"src": ["yo"], "tgt": ["  "]}\n')
    runs = tmp_path / "runs"
    result = train(
        cli,
        repo,
        runs,
        "recipes/tiny/sft_cpu.yaml",
        f"model_name_or_path={tiny_dense}",
        f"train_dataset_path={bad}",
    )
    assert result.returncode == 1
    assert "refused" in result.stderr and "2 of 2 records are bad" in result.stderr
    assert not runs.exists(), "nothing is created for a refused run"


def test_dry_run_prints_the_recipe_and_command_and_launches_nothing(cli, repo, tiny_dense, tmp_path):
    runs = tmp_path / "runs"
    result = train(
        cli, repo, runs, "recipes/tiny/sft_cpu.yaml", f"model_name_or_path={tiny_dense}", "--dry-run"
    )
    assert result.returncode == 0, result.stderr
    assert "erniekit.launcher train" in result.stdout and f"model_name_or_path: {tiny_dense}" in result.stdout
    assert "output_dir: " + str(runs.resolve()) in result.stdout
    assert not runs.exists()


def test_resume_refuses_a_changed_recipe(cli, repo, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("stage: SFT\n")
    RunRecord(
        name="x",
        run_dir=str(run),
        recipe_source="x.yaml",
        status="interrupted",
        recipe_sha256="0" * 64,
        output_dir=str(run / "output"),
    ).save()
    result = cli("train", "--resume", str(run), cwd=repo)
    assert (
        result.returncode == 2
        and "changed since the run started" in result.stderr
        and "--force" in result.stderr
    )


def test_train_needs_a_recipe_or_resume(cli, repo):
    result = cli("train", cwd=repo)
    assert result.returncode == 2 and "--resume" in result.stderr
    result = cli("train", "nope.yaml", cwd=repo)
    assert result.returncode == 2 and "no such recipe" in result.stderr
