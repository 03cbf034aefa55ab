"""How long a recipe trains, in epochs of its training records, and when that is too short to judge.

ERNIEKit trains a fixed number of steps (`max_steps`); each step takes `batch_size` x
`gradient_accumulation_steps` sequences on each data-parallel rank. A sequence holds at least one
record (ERNIEKit packs short records together), so steps x sequences per step / records is a lower
bound on the epochs a run saw: below one, part of the data was never trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# A run under one epoch whose loss fell less than this (relative to its first logged loss) has not
# learnt enough for its evaluation to say anything about the recipe or the data.
FLAT_LOSS = 0.10


def _int(values: dict[str, Any], key: str, default: int) -> int:
    try:
        return int(values.get(key, default))
    except (TypeError, ValueError):  # unset (None) or not a number: `check` reports that one
        return default


def sequences_per_step(values: dict[str, Any], devices: int = 1) -> int:
    """Sequences one optimizer step takes over all data-parallel ranks (ERNIEKit's `batch_size`,
    default 1, sets the per-device batch)."""
    model_parallel = max(_int(values, "tensor_parallel_degree", 1), 1) * max(
        _int(values, "pipeline_parallel_degree", 1), 1
    )
    data_parallel = max(devices // model_parallel, 1)
    batch = max(_int(values, "batch_size", 1), 1)
    return batch * max(_int(values, "gradient_accumulation_steps", 1), 1) * data_parallel


def epoch_steps(values: dict[str, Any], records: int, devices: int = 1) -> int:
    """Steps for one pass over `records` training records, one record a sequence (an upper bound)."""
    return max(math.ceil(records / sequences_per_step(values, devices)), 1)


def too_short_to_judge(
    steps: int, values: dict[str, Any], records: int | None, losses: Sequence[float], devices: int = 1
) -> str | None:
    """Why a finished run is too short for its evaluation to mean anything, or None.

    Too short: under one epoch of its training records (at most; see the module) and a loss that
    barely moved. Either alone is no proof: a large dataset is rarely trained for a whole epoch,
    and a loss can be flat because the learning rate is wrong.
    """
    if not records or steps <= 0:
        return None
    epochs = steps * sequences_per_step(values, devices) / records
    if epochs >= 1:
        return None
    loss = ""
    if len(losses) >= 2:
        first, last = losses[0], losses[-1]
        if first > 0 and (first - last) / first >= FLAT_LOSS:
            return None
        loss = f", loss {first:.3f} -> {last:.3f}"
    one_epoch = epoch_steps(values, records, devices)
    return (
        f"training too short to judge: {steps} steps ({epochs:.2g} epochs of {records} training "
        f"records){loss}; raise max_steps, e.g. max_steps={one_epoch} (one epoch)"
    )


def run_too_short(run: Any, losses: Sequence[float]) -> str | None:
    """`too_short_to_judge` for a finished `ernie-ops train` run: its RunRecord and recipe.yaml."""
    import yaml

    from ernie_ops.train.record import RECIPE_FILE

    values = yaml.safe_load((run.path / RECIPE_FILE).read_text(encoding="utf-8")) or {}
    records = sum(d.records or 0 for d in run.data if d.split == "train")
    devices = max(len(run.gpus), 1) * max(run.nnodes, 1)
    return too_short_to_judge(run.last_step or 0, values, records, losses, devices)
