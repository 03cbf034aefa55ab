"""A finished full-training run around a checkpoint, as `ernie-ops train` records one: for the
tests of what comes after training (export, serve) without training."""

from __future__ import annotations

import shutil
from pathlib import Path

from ernie_ops.train.record import RunRecord


def finished_run(runs: Path, checkpoint: Path, name: str = "sft-full-1") -> Path:
    """RUNS/NAME with CHECKPOINT copied in as its output and a succeeded run.json."""
    run = runs / name
    output = run / "output"
    shutil.copytree(checkpoint, output)
    RunRecord(
        name=run.name,
        run_dir=str(run),
        recipe_source="recipe.yaml",
        status="succeeded",
        fine_tuning="Full",
        model_name_or_path=str(checkpoint),
        output_dir=str(output),
    ).save()
    return run
