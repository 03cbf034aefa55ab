"""`ernie-ops train`: check, record, launch ERNIEKit, follow it, and leave a complete run directory."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ernie_ops import __version__
from ernie_ops.errors import UserError
from ernie_ops.train.follow import Follower, Outcome, supervise
from ernie_ops.train.launch import build_command, detect_gpus, launch_env
from ernie_ops.train.record import (
    LOG_DIR,
    LOSS_PLOT,
    METRICS_FILE,
    RECIPE_FILE,
    TRAIN_LOG,
    DataFile,
    RunRecord,
    checkpoints,
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


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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


def checkpoint_complete(path: Path) -> bool:
    """A checkpoint ERNIEKit can resume from: its trainer state and weights were fully written, and
    every sharded-state index in it (weights, optimizer) parses and names only shards on disk. A
    kill mid-save has been seen to leave trainer_state.json and the weights beside an empty
    optimizer index, which PaddleFormers' resume then fails to parse."""
    if not (path / "trainer_state.json").is_file():
        return False
    weights = ("model.safetensors.index.json", "peft_model.safetensors.index.json", "model_state.pdparams")
    if not any((path / w).is_file() for w in weights) and not (path / "lora_model_state.pdparams").is_file():
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


def set_aside_incomplete(output_dir: Path) -> list[str]:
    """ERNIEKit resumes from the highest checkpoint-N; one cut short by a kill would break it."""
    moved = []
    for path in checkpoints(output_dir):
        if not checkpoint_complete(path):
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


def prepare(options: TrainOptions) -> tuple[RunRecord, str, list[str]]:
    """A new run: check the recipe, create the run directory, write the resolved recipe."""
    from ernie_ops.recipe.check import check_recipe

    assert options.recipe is not None
    gpus = detect_gpus() if options.gpus is None else options.gpus
    report = check_recipe(options.recipe, options.overrides, gpus=len(gpus) or None, nnodes=options.nnodes)
    for problem in report.problems:
        print(problem.render(), file=sys.stderr)
    if report.errors:
        raise CheckFailed(
            f"{len(report.errors)} error(s) in {options.recipe}: fix them first (ernie-ops check)"
        )
    name = options.run_name or options.recipe.stem
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = (options.runs_dir / f"{name}-{stamp}").resolve()
    values, notes = resolve_recipe(options, gpus, run_dir)
    text = dump_recipe(values)
    record = RunRecord(
        name=name,
        run_dir=str(run_dir),
        recipe_source=str(options.recipe.resolve()),
        overrides=list(options.overrides),
        stage=str(values.get("stage", "SFT")),
        fine_tuning="LoRA" if str(values.get("fine_tuning", "LoRA")).strip().lower() == "lora" else "Full",
        model_name_or_path=str(values.get("model_name_or_path", "")),
        output_dir=str(values["output_dir"]),
        seed=values.get("seed"),
        max_steps=values.get("max_steps") if isinstance(values.get("max_steps"), int) else None,
        versions=versions(),
        git_commit=git_commit(),
        host=platform.node(),
        device="gpu" if gpus else "cpu",
        gpus=gpus,
        nnodes=options.nnodes,
        master=options.master,
        data=fingerprint(values),
        recipe_sha256=sha256_text(text),
    )
    return record, text, notes


class CheckFailed(Exception):
    """The recipe did not pass `ernie-ops check`: nothing was launched (exit 1, not a usage error)."""


def train(options: TrainOptions) -> tuple[RunRecord, Outcome | None]:
    if options.resume is not None:
        record, text, notes = _prepare_resume(options)
    else:
        record, text, notes = prepare(options)
    run_dir = record.path
    for note in notes:
        log.info(note)
    recipe_path = run_dir / RECIPE_FILE
    command = build_command(recipe_path, record.gpus, run_dir / LOG_DIR, record.nnodes, record.master)
    record.command = command
    if options.dry_run:
        print(text)
        print("# command:\n" + " ".join(command))
        return record, None
    (run_dir / LOG_DIR).mkdir(parents=True, exist_ok=True)
    if options.resume is None:
        recipe_path.write_text(text, encoding="utf-8")
    record.status, record.started_at = "running", record.started_at or utc_now()
    record.save()
    log.info("run directory: %s", run_dir)
    log.info("command: %s", " ".join(command))
    outcome = _follow(record, options)
    record.status, record.exit_code, record.failure = outcome.status, outcome.exit_code, outcome.failure
    record.last_step, record.ended_at = outcome.last_step, utc_now()
    if outcome.status == "succeeded":
        final = final_checkpoint(Path(record.output_dir))
        record.checkpoint = str(final) if final else None
    record.save()
    _plot(run_dir)
    return record, outcome


def _prepare_resume(options: TrainOptions) -> tuple[RunRecord, str, list[str]]:
    assert options.resume is not None
    record = RunRecord.load(options.resume)
    text = (record.path / RECIPE_FILE).read_text(encoding="utf-8")
    if record.recipe_sha256 and sha256_text(text) != record.recipe_sha256 and not options.force:
        raise UserError(
            f"{record.path / RECIPE_FILE} changed since the run started",
            hint="a resumed run must use the same recipe; pass --force to resume with the edited one",
        )
    if record.status == "succeeded":
        raise UserError(f"{record.path} already finished", hint="start a new run instead")
    output = Path(record.output_dir)
    moved = set_aside_incomplete(output)
    done = [p for p in checkpoints(output) if checkpoint_complete(p)]
    notes = [f"set aside incomplete checkpoint(s): {', '.join(moved)}"] if moved else []
    if done:
        record.resumed_from.append(str(done[-1]))
        notes.append(f"resuming from {done[-1]}")
    else:
        notes.append("no complete checkpoint yet: starting from the beginning in the same run directory")
    return record, text, notes


def _follow(record: RunRecord, options: TrainOptions) -> Outcome:
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
        return supervise(record.command, launch_env(), follower, options.stall_seconds)
    finally:
        bar.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
