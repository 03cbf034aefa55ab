"""`ernie-ops train` under concurrency, kills and a full disk (issue #14, items 4-6).

Most tests drive the real `ernie-ops train` code with a stand-in trainer (a script that logs like
ERNIEKit, writes checkpoint-N directories and resumes from the last one, as ERNIEKit does); the slow
one kills `ernie-ops train` while the real ERNIEKit trains the tiny model."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from ernie_ops.errors import UserError
from ernie_ops.proc import Lock
from ernie_ops.train import run as train_run
from ernie_ops.train.follow import Follower, supervise
from ernie_ops.train.record import OWNER_GONE, RunRecord, output_lock
from ernie_ops.train.run import TrainOptions, train

DEADLINE = 120  # a hang guard only: every test here ends in seconds

STANDIN = textwrap.dedent(
    """\
    # a stand-in for ERNIEKit: logs its steps, saves checkpoint-N, resumes from the last one
    import os, pathlib, sys, time
    import yaml
    recipe = yaml.safe_load(open(sys.argv[-1]))
    out = pathlib.Path(recipe["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    done = sorted(int(p.name[11:]) for p in out.glob("checkpoint-*") if p.name[11:].isdigit())
    print(f"trainer pid {os.getpid()} from step {done[-1] if done else 0}", flush=True)
    for step in range((done[-1] if done else 0) + 1, recipe["max_steps"] + 1):
        print("x" * int(recipe.get("standin_line", 0)), flush=True)
        print(f"loss: 1.0, learning_rate: 0.001, global_step: {step}", flush=True)
        ckpt = out / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "model_state.pdparams").write_text("w")
        (ckpt / "trainer_state.json").write_text("{}")
        (ckpt / "optimizer.pdopt").write_text("o")  # last, as PaddleFormers saves them
        (ckpt / "scheduler.pdparams").write_text("s")
        time.sleep(float(recipe.get("standin_delay", 0)))
    """
)

# runs `ernie-ops` (its real main) with the stand-in trainer in place of ERNIEKit and no recipe check
DRIVER = textwrap.dedent(
    """\
    import sys
    from ernie_ops.train import run
    run.build_command = lambda recipe, *args, **kwargs: [sys.executable, {standin!r}, str(recipe)]
    run._check = lambda *args, **kwargs: None
    from ernie_ops.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture
def standin(tmp_path, monkeypatch) -> Path:
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    monkeypatch.setattr(
        train_run, "build_command", lambda recipe, *a, **k: [sys.executable, str(script), str(recipe)]
    )
    monkeypatch.setattr(train_run, "_check", lambda *a, **k: None)
    return script


def recipe(tmp_path: Path, **values) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"stage": "SFT", "max_steps": 3, **values}))
    return path


def options(tmp_path: Path, recipe_path: Path | None = None, **kw) -> TrainOptions:
    return TrainOptions(recipe=recipe_path, runs_dir=tmp_path / "runs", gpus=[], progress=False, **kw)


def steps(run_dir: Path) -> list[int]:
    return [m["step"] for m in train_run.read_metrics(run_dir) if "loss" in m]  # training steps


def driver(tmp_path: Path, standin_path: Path) -> list[str]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(standin=str(standin_path)))
    return [sys.executable, str(script)]


def wait_for(condition, what: str, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------ item 4: run and output directories


def test_runs_with_the_same_name_in_the_same_second_get_a_directory_each(tmp_path, standin, monkeypatch):
    real = datetime.datetime

    class Frozen(real):  # both runs start "in the same second"
        @classmethod
        def now(cls, tz=None):
            return real(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(train_run, "dt", types.SimpleNamespace(datetime=Frozen, timezone=datetime.timezone))
    path = recipe(tmp_path)
    first, _ = train(options(tmp_path, path, run_name="same"))
    second, _ = train(options(tmp_path, path, run_name="same"))
    assert first.run_dir != second.run_dir
    assert Path(second.run_dir).name == "same-20260102-030405-2"
    for record in (first, second):
        assert record.status == "succeeded" and steps(record.path) == [1, 2, 3]  # each its own metrics
        assert RunRecord.load(record.path).output_dir == str(record.path / "output")


def test_an_output_dir_with_another_runs_checkpoints_is_refused(tmp_path, standin):
    shared = tmp_path / "shared-output"
    first, _ = train(options(tmp_path, recipe(tmp_path, output_dir=str(shared))))
    assert first.status == "succeeded" and (shared / "checkpoint-3").is_dir()
    runs_before = sorted((tmp_path / "runs").iterdir())

    with pytest.raises(UserError, match=r"checkpoint.*another run") as refused:
        train(options(tmp_path, recipe(tmp_path, output_dir=str(shared), max_steps=5)))
    assert "--force" in str(refused.value) and "--resume" in str(refused.value)
    assert sorted((tmp_path / "runs").iterdir()) == runs_before, "a refused run leaves nothing behind"


def test_force_trains_from_scratch_into_it_and_keeps_the_old_checkpoints_aside(tmp_path, standin):
    shared = tmp_path / "shared-output"
    train(options(tmp_path, recipe(tmp_path, output_dir=str(shared))))
    second, _ = train(options(tmp_path, recipe(tmp_path, output_dir=str(shared), max_steps=2), force=True))
    assert second.status == "succeeded" and steps(second.path) == [1, 2]  # from scratch, not "step 4/2"
    assert not second.resumed_from
    (aside,) = shared.glob("replaced-*")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert sorted(p.name for p in shared.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_force_does_not_take_an_output_dir_a_live_run_writes(tmp_path, standin):
    shared = tmp_path / "shared-output"
    shared.mkdir()
    with Lock(output_lock(shared)) as live:
        assert live.acquire("ernie-ops train other.yaml")
        with pytest.raises(UserError, match=f"pid {os.getpid()}.*other.yaml"):
            train(options(tmp_path, recipe(tmp_path, output_dir=str(shared)), force=True))


# ------------------------------------------------------------------ item 5: locks, owners, orphans


def test_resume_refuses_a_run_that_is_live(tmp_path, standin):
    record, _ = train(options(tmp_path, recipe(tmp_path)))
    record.status = "running"
    record.save()
    with Lock(record.lock) as live:
        assert live.acquire("ernie-ops train recipe.yaml")
        assert record.live_status() == "running"
        with pytest.raises(UserError, match="being trained now by pid"):
            train(options(tmp_path, resume=record.path))


def test_a_running_run_whose_owner_is_gone_is_reported_and_resumed(tmp_path, standin, caplog):
    record, _ = train(options(tmp_path, recipe(tmp_path, max_steps=4, standin_delay=0)))
    # as a SIGKILLed `ernie-ops train` leaves it: run.json says running, the lock file names its last
    # owner, and nobody holds the lock (the kernel dropped it with the process)
    record.status, record.last_step = "running", 2
    record.save()
    killed = (
        f"import os; from ernie_ops.proc import Lock; Lock({str(record.lock)!r}).acquire('ernie-ops train x')"
    )
    killed += "; os._exit(9)  # no release, as after SIGKILL"
    subprocess.run([sys.executable, "-c", killed], check=False, timeout=DEADLINE)
    for n in (3, 4):
        os.rename(record.path / "output" / f"checkpoint-{n}", record.path / "output" / f"gone-{n}")
    assert record.live_status() == OWNER_GONE
    assert record.describe_status().startswith(f"{OWNER_GONE} (was pid ")
    assert record.describe_status().endswith(": ernie-ops train x)")
    caplog.set_level("INFO")
    resumed, _ = train(options(tmp_path, resume=record.path))
    assert "owner is gone" in caplog.text
    assert resumed.status == "succeeded" and resumed.resumed_from[-1].endswith("checkpoint-2")
    assert steps(record.path)[-2:] == [3, 4]


def long_standin_run(tmp_path: Path, **popen: Any) -> subprocess.Popen:
    """`ernie-ops train` of a 1000-step run on the stand-in trainer, in a process of its own (POPEN:
    its output), for the tests that signal or kill it."""
    standin = tmp_path / "standin.py"
    standin.write_text(STANDIN)
    path = recipe(tmp_path, max_steps=1000, standin_delay=0.2)
    runs = tmp_path / "runs"
    return subprocess.Popen(
        [*driver(tmp_path, standin), "train", str(path), "--runs-dir", str(runs), "--gpus", "cpu"], **popen
    )


def its_trainer(tmp_path: Path) -> tuple[Path, int]:
    """The run directory of long_standin_run's run and its trainer's pid, once it has started."""
    log = wait_for(lambda: next((tmp_path / "runs").glob("*/logs/train.log"), None), "the run's log")
    return log.parent.parent, int(wait_for(lambda: _trainer_pid(log), "the trainer"))


def test_sigkill_of_ernie_ops_train_takes_the_trainer_with_it(tmp_path):
    ops = long_standin_run(tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_dir, trainer = its_trainer(tmp_path)
        assert RunRecord.load(run_dir).live_status() == "running"
        ops.kill()
        ops.wait(timeout=DEADLINE)
        wait_for(lambda: gone(trainer), "the trainer to die with ernie-ops")
        record = RunRecord.load(run_dir)
        assert record.status == "running" and record.live_status() == OWNER_GONE
    finally:
        ops.kill()


def test_sighup_stops_the_trainer_and_records_the_signal(tmp_path):
    ops = long_standin_run(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_dir, trainer = its_trainer(tmp_path)
        ops.send_signal(signal.SIGHUP)
        out, err = ops.communicate(timeout=DEADLINE)
    finally:
        ops.kill()
    assert ops.returncode == 128 + signal.SIGHUP, out + err
    assert gone(trainer)
    record = RunRecord.load(run_dir)
    assert record.status == "interrupted" and "SIGHUP" in record.failure
    assert "--resume" in err


def _trainer_pid(log: Path) -> str | None:
    for line in log.read_text().splitlines():
        if line.startswith("trainer pid "):
            return line.split()[2]
    return None


# ------------------------------------------------------------------ item 6: a full disk


FOREVER = [sys.executable, "-c", "import sys\nwhile True: sys.stdout.write('x' * 200 + '\\n')"]


def test_a_log_that_cannot_be_written_stops_the_run_instead_of_hanging(tmp_path):
    # /dev/full fails every write with ENOSPC, as a full disk does; the child never stops by itself.
    # In a subprocess so that a hang fails the test instead of hanging it.
    code = textwrap.dedent(
        f"""\
        from pathlib import Path
        from ernie_ops.train.follow import Follower, supervise
        follower = Follower(Path({str(tmp_path / "m.jsonl")!r}), Path("/dev/full"), None)
        outcome = supervise({FOREVER!r}, {{}}, follower, stall_seconds=600)
        print(outcome.status, "|", outcome.failure)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("failed | cannot write /dev/full: No space left on device"), result.stdout
    assert "Traceback" not in result.stderr


def test_metrics_that_cannot_be_written_stop_the_run(tmp_path):
    lines = [sys.executable, "-c", "print('loss: 1.0, learning_rate: 0.1, global_step: 1', flush=True)"]
    follower = Follower(Path("/dev/full"), tmp_path / "train.log", 1)
    outcome = supervise(lines, {}, follower, stall_seconds=600)
    assert outcome.status == "failed" and "/dev/full: No space left on device" in outcome.failure


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root): the /dev/full tests cover ENOSPC")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_train_on_a_full_disk_fails_with_the_reason_and_resumes_after_space_is_freed(tmp_path, small_disk):
    standin = tmp_path / "standin.py"
    standin.write_text(STANDIN)
    # 4 KiB of log per step: a 2 MiB disk fills around step 200 of 400
    path = recipe(tmp_path, max_steps=400, standin_line=4096)
    cmd = [*driver(tmp_path, standin), "train", str(path), "--runs-dir", str(small_disk), "--gpus", "cpu"]
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE)
    assert full.returncode == 1, full.stdout + full.stderr
    # no traceback of ernie-ops' own; the trainer's (when the disk fills during a checkpoint save
    # rather than a log write) may be among the quoted, indented log lines
    own_traceback = any(line.startswith("Traceback") for line in full.stderr.splitlines())
    assert "No space left on device" in full.stderr and not own_traceback, full.stderr[-3000:]
    (run_dir,) = small_disk.iterdir()
    record = RunRecord.load(run_dir)
    assert record.status == "failed" and "No space left on device" in record.failure
    assert record.live_status() == "failed" and 0 < (record.last_step or 0) < 400

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = subprocess.run(
        [*cmd[:2], "train", "--resume", str(run_dir)], capture_output=True, text=True, timeout=DEADLINE
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert RunRecord.load(run_dir).status == "succeeded" and steps(run_dir)[-1] == 400


# ------------------------------------------------------------------ overrides after --resume


def test_overrides_after_resume_are_applied_max_steps_trains_further(tmp_path, standin):
    first, _ = train(options(tmp_path, recipe(tmp_path, max_steps=2)))
    assert first.status == "succeeded"
    with pytest.raises(UserError, match="already finished"):
        train(options(tmp_path, resume=first.path))
    with pytest.raises(UserError, match="keeps its output_dir"):
        train(options(tmp_path, resume=first.path, overrides=("output_dir=/tmp/elsewhere",)))
    further, _ = train(options(tmp_path, resume=first.path, overrides=("max_steps=4",)))
    assert further.status == "succeeded" and further.max_steps == 4 and steps(first.path) == [1, 2, 3, 4]
    assert yaml.safe_load((first.path / "recipe.yaml").read_text())["max_steps"] == 4
    assert further.overrides == ["max_steps=4"]


def test_cli_takes_a_key_value_after_resume_as_an_override(cli, repo, tmp_path):
    result = cli("train", "--resume", str(tmp_path / "nope"), "max_steps=600", cwd=repo)
    assert result.returncode == 2 and "not a run directory" in result.stderr, result.stderr
    result = cli("train", "--resume", str(tmp_path / "nope"), "recipes/tiny/sft_cpu.yaml", cwd=repo)
    assert result.returncode == 2 and "its own recipe.yaml" in result.stderr, result.stderr


def test_metrics_cut_short_by_a_full_disk_still_read(tmp_path):
    good = '{"step": 1, "loss": 1.0}\n'
    (tmp_path / "metrics.jsonl").write_text(good + '{"step": 2, "lo' + good.replace("1", "3"))
    assert [m["step"] for m in train_run.read_metrics(tmp_path)] == [1]


def _trainers(recipe_path: Path) -> list[psutil.Process]:
    """The live ERNIEKit processes training this recipe."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        alive = proc.info["status"] != psutil.STATUS_ZOMBIE
        if alive and str(recipe_path) in cmdline and "erniekit.launcher" in cmdline:
            found.append(proc)
    return found


@pytest.mark.slow
def test_sigkill_of_real_training_leaves_no_orphan_and_one_trainer_resumes(repo, tiny_dense, tmp_path):
    runs = tmp_path / "runs"
    exe = shutil.which("ernie-ops", path=str(Path(sys.executable).parent))
    args = [exe, "train", "recipes/tiny/sft_cpu.yaml", f"model_name_or_path={tiny_dense}", "max_steps=300"]
    args += ["save_steps=5", "eval_steps=1000", "--runs-dir", str(runs), "--gpus", "cpu"]
    first = subprocess.Popen(args, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # a whole checkpoint, not one being saved (a half-saved one is set aside by --resume)
        def complete() -> Path | None:
            saved = runs.glob("*/output/checkpoint-*")
            return next((c for c in saved if train_run.checkpoint_complete(c)), None)

        run_dir = wait_for(
            complete,
            "a complete checkpoint",
            600,
        ).parent.parent
        (trainer,) = _trainers(run_dir / "recipe.yaml")
        first.kill()  # SIGKILL: nothing in ernie-ops runs, the kernel has to take the trainer down
        first.wait(timeout=DEADLINE)
        wait_for(lambda: gone(trainer.pid), "the trainer to die with ernie-ops")
        assert not _trainers(run_dir / "recipe.yaml")
    finally:
        first.kill()
    record = RunRecord.load(run_dir)
    # a dying multi-threaded process is a zombie leader before its last thread lets go of the lock
    wait_for(lambda: record.live_status() == OWNER_GONE, "the lock to be released")
    described = record.describe_status()
    assert record.status == "running" and described.startswith(f"{OWNER_GONE} (was pid {first.pid} ")
    assert "train recipes/tiny/sft_cpu.yaml" in described

    resume = [exe, "train", "--resume", str(run_dir)]
    second = subprocess.Popen(resume, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(
            lambda: _trainers(run_dir / "recipe.yaml") or second.poll() is not None,
            "the resumed trainer",
            300,
        )
        third = subprocess.run(resume, cwd=repo, capture_output=True, text=True, timeout=DEADLINE)
        assert third.returncode == 2 and "being trained now by pid" in third.stderr, third.stderr
        assert len(_trainers(run_dir / "recipe.yaml")) <= 1
        out, err = second.communicate(timeout=600)
    finally:
        second.kill()
    assert second.returncode == 0, out + err
    assert "owner is gone" in err
    record = RunRecord.load(run_dir)
    assert record.status == "succeeded" and record.last_step == 300 and record.live_status() == "succeeded"
    assert record.resumed_from and "checkpoint-" in record.resumed_from[-1]


@pytest.mark.slow
def test_real_erniekit_trains_a_finished_run_further_with_max_steps_after_resume(
    cli, repo, tiny_dense, tmp_path
):
    runs = tmp_path / "runs"
    first = cli(
        "train",
        "recipes/tiny/sft_cpu.yaml",
        f"model_name_or_path={tiny_dense}",
        "--runs-dir",
        str(runs),
        "--gpus",
        "cpu",
        cwd=repo,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr
    (run_dir,) = runs.iterdir()
    further = cli("train", "--resume", str(run_dir), "max_steps=8", cwd=repo, timeout=600)
    assert further.returncode == 0, further.stderr
    assert "step 8/8" in further.stdout
    record = RunRecord.load(run_dir)
    assert (
        record.status == "succeeded"
        and record.last_step == 8
        and record.resumed_from[-1].endswith("checkpoint-4")
    )
    assert steps(run_dir) == list(range(1, 9))  # steps 5-8 continue from checkpoint-4, none repeated


def test_a_recipe_edit_accepted_by_force_is_not_refused_again(tmp_path, standin):
    record, _ = train(options(tmp_path, recipe(tmp_path)))
    for force in (True, False):
        record.status = "interrupted"
        record.save()
        if force:
            with (record.path / "recipe.yaml").open("a") as f:
                f.write("# edited\n")
        resumed, _ = train(options(tmp_path, resume=record.path, force=force))
        assert resumed.status == "succeeded"
        record = RunRecord.load(record.path)


def test_a_run_killed_after_its_last_save_is_finished_not_trained_further(tmp_path, standin, monkeypatch):
    record, _ = train(options(tmp_path, recipe(tmp_path, max_steps=3, standin_delay=0)))
    record.status, record.checkpoint = "interrupted", None  # a SIGHUP between the last save and the end
    record.save()
    # relaunched, PaddleFormers would train one step past max_steps (seen: step 101/100)
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    monkeypatch.setattr(train_run, "build_command", lambda *a, **k: failing)
    resumed, outcome = train(options(tmp_path, resume=record.path))
    assert outcome is not None and outcome.exit_code == 0
    assert (resumed.status, resumed.last_step) == ("succeeded", 3)
    assert resumed.checkpoint is not None and resumed.checkpoint.endswith("checkpoint-3")
    assert RunRecord.load(record.path).status == "succeeded"
