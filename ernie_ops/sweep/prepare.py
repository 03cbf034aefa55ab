"""The export a variant's engine needs, made before it is served (not discovered at serve time).

- `engine: llamacpp` serves a GGUF file of the variant's `quantization` (`ernie-ops export --format
  gguf --quant Q`); `engine: vllm` the transformers layout (`--format hf`). Every other engine serves
  the checkpoint as it is.
- A run directory is exported into the run and recorded in its run.json, exactly as `ernie-ops
  export` does (so a later `ernie-ops serve RUN` finds it); an export the run already records is
  reused. A checkpoint directory is converted into the sweep's `exports/`. A model that is not local
  (a hub id) or already in the right form is served as it is.
- Each export is made once per (source, format, quantization) and recorded in sweep.json, so the
  variants that share it, and a resumed sweep, reuse it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from ernie_ops.errors import UserError
from ernie_ops.sweep.record import SweepRecord


def needed(profile: Any) -> tuple[str, str | None] | None:
    """(format, quantization) of the export the profile's engine serves, None when it serves the
    checkpoint itself."""
    if profile.engine == "llamacpp":
        return "gguf", str(profile.quantization)
    if profile.engine == "vllm":
        return "hf", None
    return None


def prepare(record: SweepRecord, profile: Any, say: Any) -> tuple[Any, str]:
    """The profile with `model` pointing at what its engine serves, and a summary; raises
    UserError / ExportFailed when the export cannot be made."""
    need = needed(profile)
    source = Path(profile.model).expanduser()
    if need is None:
        return profile, "nothing to prepare: the engine serves the checkpoint itself"
    fmt, quant = need
    if not source.exists():
        return profile, f"{profile.model} is not local: served as given"
    if fmt == "gguf" and source.is_file():
        return profile, f"{source.name} is already a GGUF file"
    if fmt == "hf" and not (source / "run.json").is_file() and _layout(source) == "hf":
        return profile, f"{source.name} already is in the transformers layout"
    key = f"{fmt}:{quant or '-'}:{source.resolve()}"
    done = record.exports.get(key)
    if done and Path(done["path"]).exists():
        return dataclasses.replace(profile, model=done["path"]), f"reused {done['path']} (made earlier)"
    say(f"preparing the {fmt}{' ' + quant if quant else ''} export of {source}")
    started = time.perf_counter()
    path, how = _export(record, source, fmt, quant)
    record.exports[key] = {
        "path": str(path),
        "from": str(source),
        "format": fmt,
        "quantization": quant,
        "how": how,
        "seconds": round(time.perf_counter() - started, 2),
    }
    record.save()
    return dataclasses.replace(profile, model=str(path)), f"{how}: {path}"


def _layout(path: Path) -> str | None:
    from ernie_ops.train.hf_format import checkpoint_layout

    return checkpoint_layout(path) if (path / "config.json").is_file() else None


def _export(record: SweepRecord, source: Path, fmt: str, quant: str | None) -> tuple[Path, str]:
    from ernie_ops.train import export

    is_run = (source / "run.json").is_file()
    if is_run:
        recorded = _recorded(source, fmt, quant)
        if recorded is not None:
            return recorded, "the run's recorded export"
        if fmt == "gguf":
            assert quant is not None
            return export.export_gguf(source, quant).path, "exported into the run"
        return export.export_hf(source).path, "exported into the run"
    if not (source / "config.json").is_file():
        raise UserError(
            f"{source} is neither a run directory (run.json) nor a checkpoint directory (config.json)",
            hint="model: a run `ernie-ops train` made, a checkpoint directory, or the exported file itself",
        )
    out = record.path / "exports"
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "gguf":
        assert quant is not None
        return export.convert_checkpoint_gguf(
            source, quant, out=out / f"{source.name}-{quant}.gguf"
        ).path, "converted"
    converted = export.convert_checkpoint(source, "hf", out=out / f"{source.name}-hf")
    if not converted.report.ok:
        failed = ", ".join(c.name for c in converted.report.failed)
        raise UserError(f"the transformers-layout conversion of {source} failed verification ({failed})")
    return converted.path, "converted"


def _recorded(run: Path, fmt: str, quant: str | None) -> Path | None:
    from ernie_ops.train.record import RunRecord

    exports = RunRecord.load(run).exports.get(fmt) or {}
    entry = exports.get(quant) if fmt == "gguf" else exports
    path = Path(entry["path"]) if isinstance(entry, dict) and entry.get("path") else None
    return path if path is not None and path.exists() else None
