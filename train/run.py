"""`ernie-ops train`: check, record, launch ERNIEKit, follow it, and leave a complete run directory."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import itertools
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ernie_ops import __version__
from ernie_ops.errors import UserError
from ernie_ops.files import atomic_output, write_text_atomic
from ernie_ops.proc import Lock
from ernie_ops.records import utc_now
from ernie_ops.train.follow import Follower, Outcome, supervise
from ernie_ops.train.launch import build_command, detect_gpus, launch_env
from ernie_ops.train.record import (
    LOG_DIR,
    LOSS_PLOT,
    METRICS_FILE,
    OWNER_GONE,
    RECIPE_FILE,
    RUN_LOCK,
    TRAIN_LOG,
    DataFile,
    RunRecord,
    checkpoints,
    output_lock,
)

log = logging.getLogger(__name__)
PATH_KEYS = ("model_name_or_path", "train_dataset_path", "eval_dataset_path")


@dataclass
class TrainOptions:
    recipe: Path | None = None
    overrides: tuple[str, ...] = ()
    run_name: str | None = None
    runs_dir: Path = Path("runs")
    gpus: list[int] | None = None  # None: detect
    nnodes: int = 1
    master: str | None = None
    dry_run: bool = False
    resume: Path | None = None
    force: bool = False
    stall_seconds: float = 1800.0
    echo: bool = False
    progress: bool = True


# --------------------------------------------------------------------------------------------
# the resolved recipe


def resolve_recipe(options: TrainOptions, gpus: list[int], run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """The recipe exactly as ERNIEKit will get it, and notes on what ernie-ops changed and why."""
    from omegaconf import OmegaConf

    from ernie_ops.recipe.library import CPU

    assert options.recipe is not None
    values = yaml.safe_load(options.recipe.read_text(encoding="utf-8")) or {}
    if options.overrides:
        merged = OmegaConf.merge(values, OmegaConf.from_cli(list(options.overrides)))
        values = OmegaConf.to_container(merged)
    assert isinstance(values, dict)
    notes = []
    if not gpus:
        added = {k: v for k, v in CPU.items() if values.get(k) != v and k != "report_to"}
        if added:
            values.update(added)
            notes.append(
                "CPU run: " + ", ".join(f"{k}={v}" for k, v in added.items()) + " (GPU-only otherwise)"
            )
        values.setdefault("report_to", "none")
    out = values.get("output_dir")
    if out is None or not Path(str(out)).is_absolute():
        values["output_dir"] = str(run_dir / "output")
        notes.append(f"output_dir {out or '(unset)'} placed inside the run directory: {values['output_dir']}")
    for key in PATH_KEYS:  # absolute, so the run can be resumed from any directory
        value = values.get(key)
        if isinstance(value, str) and value and "://" not in value:
            parts = [str(Path(p).resolve()) if Path(p).exists() else p for p in value.split(",")]
            values[key] = ",".join(parts)
    return values, notes


def dump_recipe(values: dict[str, Any]) -> str:
    header = "# Resolved by ernie-ops train: the recipe exactly as passed to ERNIEKit.\n"
    return header + yaml.safe_dump(values, sort_keys=False, default_flow_style=None, width=200)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# the record


def versions() -> dict[str, str]:
    from ernie_ops.doctor import dist_version

    out = {"ernie_ops": __version__, "python": platform.python_version()}
    for key, names in (
        ("erniekit", ("erniekit",)),
        ("paddleformers", ("paddleformers",)),
        ("paddle", ("paddlepaddle-gpu", "paddlepaddle")),
    ):
        found = dist_version(*names)
        if found:
            out[key] = found[1]
    return out


def git_commit() -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def fingerprint(values: dict[str, Any]) -> list[DataFile]:
    """sha256, size and record count of every local dataset file, in one read of each."""
    files = []
    for split in ("train", "eval"):
        for part in str(values.get(f"{split}_dataset_path") or "").split(","):
            path = Path(part)
            if part and path.is_file():
                digest, records = hashlib.sha256(), 0
                with path.open("rb") as f:
                    for line in f:
                        digest.update(line)
                        records += not line.isspace()
                files.append(DataFile(str(path), digest.hexdigest(), path.stat().st_size, records, split))
    return files


# --------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_complete(path: Path, training_state: bool = False) -> bool:
    """A checkpoint whose trainer state and weights were fully written, every sharded-state index in
    it (weights, optimizer) parsing and naming only shards on disk; with TRAINING_STATE, one ERNIEKit
    can resume from: the optimizer and scheduler were written too. PaddleFormers saves the weights,
    trainer_state.json and the RNG state first and the optimizer and scheduler last, so a kill
    mid-save has been seen to leave a checkpoint with no optimizer at all, or with an empty index."""
    if not (path / "trainer_state.json").is_file():
        return False
    weights = ("model.safetensors.index.json", "peft_model.safetensors.index.json", "model_state.pdparams")
    if not any((path / w).is_file() for w in weights) and not (path / "lora_model_state.pdparams").is_file():
        return False
    if training_state and not (
        (path / "scheduler.pdparams").is_file()
        and ((path / "optimizer.safetensors.index.json").is_file() or any(path.glob("*.pdopt")))
    ):
        return False
    return all(_index_whole(index) for index in path.glob("*.index.json"))


def _index_whole(index: Path) -> bool:
    try:
        value = json.loads(index.read_text(encoding="utf-8"))
        maps = [value.get("weight_map") or {}, value.get("master_weights") or {}]
        shards = {f for m in maps if isinstance(m, dict) for f in m.values()}
    except (OSError, ValueError, AttributeError, TypeError):
        return False
    return all(isinstance(f, str) and (index.parent / f).is_file() for f in shards)


def set_aside_incomplete(output_dir: Path, training_state: bool = False) -> list[str]:
    """ERNIEKit resumes from the highest checkpoint-N; one cut short by a kill would break it."""
    moved = []
    for path in checkpoints(output_dir):
        if not checkpoint_complete(path, training_state):
            target = path.with_name(path.name + ".incomplete")
            shutil.rmtree(target, ignore_errors=True)
            path.rename(target)
            moved.append(path.name)
    return moved


def final_checkpoint(output_dir: Path) -> Path | None:
    """Where ERNIEKit left the finished model: output_dir itself when it holds weights."""
    tops = ("model.safetensors.index.json", "model.safetensors", "peft_model.safetensors.index.json")
    if any((output_dir / t).is_file() for t in tops) or (output_dir / "lora_model_state.pdparams").is_file():
        return output_dir
    complete = [p for p in checkpoints(output_dir) if checkpoint_complete(p)]
    return complete[-1] if complete else None


# --------------------------------------------------------------------------------------------
# the run

SPACE_RESERVE = ".space-reserve"  # freed at the end, so a full disk still lets the run record its end
RESERVE_BYTES = 1 << 20


def _check(recipe: Path, overrides: tuple[str, ...], gpus: int | None, nnodes: int) -> None:
    from ernie_ops.recipe.check import check_recipe

    report = check_recipe(recipe, overrides, gpus=gpus, nnodes=nnodes)
    for line in report.render()[:-1]:  # the problems, the first hundred and a count of the rest
        print(line, file=sys.stderr)
    if report.errors:
        raise CheckFailed(f"{len(report.errors)} error(s) in {recipe}: fix them first (ernie-ops check)")


def claim_run_dir(runs_dir: Path, name: str, stamp: str) -> Path:
    """A new run directory, created exclusively: runs started in the same second get one each."""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--runs-dir {runs_dir} is not a directory", hint="name a directory") from None
    for n in itertools.count(1):
        path = (runs_dir / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")).resolve()
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _hold(path: Path, held: list[Lock], busy: str, hint: str) -> None:
    """Take the ownership lock at PATH for as long as HELD lasts; a UserError naming the owner if live."""
    lock = Lock(path)
    if not lock.acquire():
        owner = Lock.holder(path) or Lock.last_owner(path)
        raise UserError(f"{busy} by {owner.describe() if owner else 'another process'}", hint=hint)
    held.append(lock)


def _claim_output(output: Path, run_dir: Path, options: TrainOptions, held: list[Lock]) -> list[str]:
    """A new run's output_dir outside its run directory: never one a live run writes, and one that
    holds another run's checkpoints only with --force (ERNIEKit would silently resume from them)."""
    if output.is_relative_to(run_dir):
        return []  # inside the new run directory: nobody else's
    if not options.dry_run:
        _hold(
            output_lock(output),
            held,
            f"output_dir {output} is being written",
            "wait for that run, or stop it",
        )
    found = checkpoints(output)
    if not found:
        return []
    if not options.force:
        raise UserError(
            f"output_dir {output} already holds {len(found)} checkpoint(s) of another run: ERNIEKit would "
            f"silently resume from {found[-1].name}",
            hint="continue that run with `ernie-ops train --resume RUN_DIR`, give another output_dir=..., or "
            "pass --force to train from scratch (its checkpoints are moved aside, not deleted)",
        )
    aside = output / f"replaced-{run_dir.name}"
    if options.dry_run:
        return [f"--force: would move {len(found)} checkpoint(s) of another run to {aside}"]
    aside.mkdir()
    for path in found:
        path.rename(aside / path.name)
    return [f"--force: moved {len(found)} checkpoint(s) of another run to {aside} (delete it to free space)"]


def prepare(options: TrainOptions, held: list[Lock]) -> tuple[RunRecord, str, list[str]]:
    """A new run: check the recipe, claim the run directory and its output_dir (locks in HELD)."""
    assert options.recipe is not None
    gpus = detect_gpus() if options.gpus is None else options.gpus
    _check(options.recipe, options.overrides, len(gpus) or None, options.nnodes)
    name = options.run_name or options.recipe.stem
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if options.dry_run:
        run_dir = (options.runs_dir / f"{name}-{stamp}").resolve()
    else:
        run_dir = claim_run_dir(options.runs_dir, name, stamp)
        _hold(run_dir / RUN_LOCK, held, f"{run_dir} is in use", "start the run again")
    try:
        values, notes = resolve_recipe(options, gpus, run_dir)
        notes += _claim_output(Path(values["output_dir"]), run_dir, options, held)
        return _new_record(options, name, run_dir, values, gpus), dump_recipe(values), notes
    except BaseException:
        if not options.dry_run:
            shutil.rmtree(run_dir, ignore_errors=True)  # refused or interrupted: leave nothing behind
        raise


def _new_record(
    options: TrainOptions, name: str, run_dir: Path, values: dict[str, Any], gpus: list[int]
) -> RunRecord:
    assert options.recipe is not None
    return RunRecord(
        name=name,
        run_dir=str(run_dir),
        recipe_source=str(options.recipe.resolve()),
        overrides=list(options.overrides),
        stage=str(values.get("stage", "SFT")),
        fine_tuning="LoRA" if str(values.get("fine_tuning", "LoRA")).strip().lower() == "lora" else "Full",
        model_name_or_path=str(values.get("model_name_or_path", "")),
        output_dir=str(values["output_dir"]),
        seed=values.get("seed"),
        max_steps=_max_steps(values),
        versions=versions(),
        git_commit=git_commit(),
        host=platform.node(),
        device="gpu" if gpus else "cpu",
        gpus=gpus,
        nnodes=options.nnodes,
        master=options.master,
        data=fingerprint(values),
        recipe_sha256=sha256_text(dump_recipe(values)),
    )


def _max_steps(values: dict[str, Any]) -> int | None:
    steps = values.get("max_steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


class CheckFailed(Exception):
    """The recipe did not pass `ernie-ops check`: nothing was launched (exit 1, not a usage error)."""


def train(options: TrainOptions) -> tuple[RunRecord, Outcome | None]:
    held: list[Lock] = []  # the run's locks: the trainer inherits them, released when the run is over
    try:
        if options.resume is not None:
            record, text, notes = _prepare_resume(options, held)
        else:
            record, text, notes = prepare(options, held)
        run_dir = record.path
        for note in notes:
            log.info(note)
        final = _final_step_saved(record) if options.resume is not None and not options.dry_run else None
        if final is not None:  # killed after its last save: relaunching would train past max_steps
            log.info("%s is the last step (max_steps %s): nothing left to train", final, record.max_steps)
            record.status, record.exit_code, record.failure = "succeeded", 0, None
            record.last_step, record.checkpoint = record.max_steps, str(final)
            record.ended_at = utc_now()
            record.save()
            return record, Outcome(0, "succeeded", None, record.max_steps)
        recipe_path = run_dir / RECIPE_FILE
        command = build_command(recipe_path, record.gpus, run_dir / LOG_DIR, record.nnodes, record.master)
        record.command = command
        if options.dry_run:
            print(text)
            print("# command:\n" + " ".join(command))
            return record, None
        (run_dir / LOG_DIR).mkdir(parents=True, exist_ok=True)
        write_text_atomic(recipe_path, text)
        reserve = _reserve_space(run_dir)
        record.status, record.started_at = "running", record.started_at or utc_now()
        record.save()
        log.info("run directory: %s", run_dir)
        log.info("command: %s", " ".join(command))
        outcome = _follow(record, options, tuple(lock.fd for lock in held if lock.fd is not None))
        record.status, record.exit_code, record.failure = outcome.status, outcome.exit_code, outcome.failure
        record.last_step, record.ended_at = outcome.last_step, utc_now()
        if outcome.status == "succeeded":
            final = final_checkpoint(Path(record.output_dir))
            record.checkpoint = str(final) if final else None
        reserve.unlink(missing_ok=True)  # the trainer is gone: the reserve makes room for the record
        record.save()
        _plot(run_dir)
        return record, outcome
    finally:
        for lock in held:
            lock.release()


def _final_step_saved(record: RunRecord) -> Path | None:
    """The run's last complete checkpoint when it is at max_steps (PaddleFormers resumed from there
    trains one step more: seen as step 101/100 after a SIGHUP landed between the last save and the
    end)."""
    if not record.max_steps or record.max_steps <= 0:
        return None
    done = [p for p in checkpoints(Path(record.output_dir)) if checkpoint_complete(p)]
    if done and int(done[-1].name.rsplit("-", 1)[1]) >= record.max_steps:
        return done[-1]
    return None


def _reserve_space(run_dir: Path) -> Path:
    """Set a little space aside for the run's last record; refuse to start on a full disk."""
    path = run_dir / SPACE_RESERVE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        finally:
            os.close(fd)
    except OSError as err:
        path.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise UserError(
                f"no space left on the disk of {run_dir}", hint="free space, or choose another --runs-dir"
            ) from None
        raise
    return path


def _prepare_resume(options: TrainOptions, held: list[Lock]) -> tuple[RunRecord, str, list[str]]:
    assert options.resume is not None
    record = RunRecord.load(options.resume)
    output = Path(record.output_dir)
    status = record.describe_status()
    if not options.dry_run:
        busy, hint = f"{record.path} is being trained now", "wait for it, or stop it and resume then"
        _hold(record.lock, held, busy, hint)
        if not output.is_relative_to(record.path):
            _hold(output_lock(output), held, f"its output_dir {output} is being written", hint)
    recipe_path = record.path / RECIPE_FILE
    text = recipe_path.read_text(encoding="utf-8")
    if record.recipe_sha256 and sha256_text(text) != record.recipe_sha256 and not options.force:
        raise UserError(
            f"{recipe_path} changed since the run started",
            hint="a resumed run must use the same recipe; pass --force to resume with the edited one",
        )
    record.recipe_sha256 = sha256_text(text)  # --force accepted an edit: the next resume checks against it
    notes = []
    if status.startswith(OWNER_GONE):
        was = status[len(OWNER_GONE) :]
        notes.append(f"the run's owner is gone{was} and never recorded how it ended: resuming it")
    if options.overrides:
        text, more = _override(record, text, options)
        notes += more
    if record.status == "succeeded":
        raise UserError(
            f"{record.path} already finished (step {record.last_step}/{record.max_steps or '?'})",
            hint="start a new run, or train it further: ernie-ops train --resume RUN_DIR max_steps=N",
        )
    # resuming needs the optimizer and scheduler too, unless the recipe never saves them
    state = not (yaml.safe_load(text) or {}).get("ignore_save_lr_and_optim", False)
    moved = set_aside_incomplete(output, state) if not options.dry_run else []
    done = [p for p in checkpoints(output) if checkpoint_complete(p, state)]
    notes += [f"set aside incomplete checkpoint(s): {', '.join(moved)}"] if moved else []
    if done:
        record.resumed_from.append(str(done[-1]))
        notes.append(f"resuming from {done[-1]}")
    else:
        notes.append("no complete checkpoint yet: starting from the beginning in the same run directory")
    return record, text, notes


def _override(record: RunRecord, text: str, options: TrainOptions) -> tuple[str, list[str]]:
    """Apply key=value overrides to a resumed run's recipe (e.g. max_steps=600 to train further)."""
    from omegaconf import OmegaConf

    recipe_path = record.path / RECIPE_FILE
    _check(recipe_path, options.overrides, len(record.gpus) or None, record.nnodes)
    merged = OmegaConf.merge(yaml.safe_load(text) or {}, OmegaConf.from_cli(list(options.overrides)))
    values: dict[str, Any] = OmegaConf.to_container(merged)  # type: ignore[assignment]
    if str(values.get("output_dir")) != record.output_dir:
        raise UserError(
            "a resumed run keeps its output_dir (its checkpoints are there)",
            hint="start a new run for another output_dir",
        )
    steps = _max_steps(values)
    if record.status == "succeeded":
        if steps is None or record.last_step is None or steps <= record.last_step:
            raise UserError(
                f"{record.path} already finished at step {record.last_step}",
                hint=f"train it further with max_steps above {record.last_step}, or start a new run",
            )
        record.status, record.checkpoint, record.exported, record.verified = "created", None, None, None
    text = dump_recipe(values)
    record.overrides += list(options.overrides)
    record.recipe_sha256, record.max_steps = sha256_text(text), steps
    return text, [f"applied to the resumed run: {' '.join(options.overrides)}"]


def _follow(record: RunRecord, options: TrainOptions, locks: tuple[int, ...]) -> Outcome:
    from tqdm import tqdm

    run_dir = record.path
    bar = tqdm(
        total=record.max_steps if record.max_steps and record.max_steps > 0 else None,
        unit="step",
        desc=record.name,
        disable=None if options.progress else True,
        dynamic_ncols=True,
    )

    def on_step(metrics: dict[str, Any]) -> None:
        bar.update(metrics["step"] - bar.n)
        shown = {"loss": metrics.get("loss"), "lr": metrics.get("learning_rate")}
        if "interval_samples_per_second" in metrics:
            shown["samples/s"] = metrics["interval_samples_per_second"]
        bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items() if v is not None}, refresh=False)
        if bar.disable:
            log.info(
                "step %s/%s loss %s lr %s",
                metrics["step"],
                record.max_steps or "?",
                metrics.get("loss"),
                metrics.get("learning_rate"),
            )

    train_records = [d.records or 0 for d in record.data if d.split == "train"]
    follower = Follower(
        run_dir / METRICS_FILE,
        run_dir / LOG_DIR / TRAIN_LOG,
        record.max_steps,
        on_step,
        options.echo,
        records=sum(train_records) or None,
    )
    try:
        # one CPU process dies outright with us; paddle.distributed.launch gets SIGTERM to stop its workers
        death = signal.SIGTERM if record.gpus else signal.SIGKILL
        return supervise(
            record.command, launch_env(), follower, options.stall_seconds, death_signal=death, pass_fds=locks
        )
    finally:
        bar.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    found = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:  # cut short by a full disk or a kill (a resume appends after it): skipped
            continue
    return [m for m in found if isinstance(m, dict)]


def _plot(run_dir: Path) -> Path | None:
    metrics = read_metrics(run_dir)
    steps = [m for m in metrics if "loss" in m and m.get("step") is not None]
    evals = [m for m in metrics if "eval_loss" in m and m.get("step") is not None]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([m["step"] for m in steps], [m["loss"] for m in steps], label="train loss", color="#3b6fb6")
    if evals:
        ax.plot(
            [m["step"] for m in evals],
            [m["eval_loss"] for m in evals],
            "o-",
            label="eval loss",
            color="#c0392b",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(run_dir.name)
    ax.legend()
    fig.tight_layout()
    out = run_dir / LOSS_PLOT
    try:
        with atomic_output(out) as f:
            fig.savefig(f, dpi=110, format="png")
    except OSError as err:  # the record is saved; a missing plot is no reason to fail the run
        log.warning("loss plot not written: %s", err)
        return None
    finally:
        plt.close(fig)
    return out
