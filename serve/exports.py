"""The export a serve profile's engine reads, made before it is served (not discovered at serve time).

Shared by `ernie-ops pipeline` and `ernie-ops sweep`:

- `engine: llamacpp` serves a GGUF file of the profile's `quantization` (`ernie-ops export --format
  gguf --quant Q`; the profile's default, bf16, is not a GGUF type: f16, as `ernie-ops export`
  defaults); `engine: vllm` the transformers layout (`--format hf`). Every other engine serves the
  checkpoint as it is.
- A run directory is exported into the run and recorded in its run.json, exactly as `ernie-ops
  export` does (so a later `ernie-ops serve RUN` finds it); an export the run already records is
  reused. A checkpoint directory is converted into the caller's `exports/`. A model that is not
  local (a hub id) or already in the right form is served as it is.
- Each export is made once per (source, format, quantization) and recorded in the caller's record
  (pipeline.json, sweep.json), so what shares it, and a resumed pipeline or sweep, reuses it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ernie_ops.errors import UserError

DEFAULT_GGUF = "f16"  # `ernie-ops export --format gguf` without --quant


class ExportStore(Protocol):
    """The record that keeps the exports made: the pipeline's or the sweep's."""

    exports: dict[str, dict[str, Any]]  # "gguf:q4_0:<source>" -> what was made (see `prepare`)

    @property
    def path(self) -> Path: ...  # conversions of checkpoint directories go into path/exports/

    def save(self) -> Any: ...


@dataclasses.dataclass
class Prepared:
    profile: Any  # the profile with `model` pointing at what its engine serves
    summary: str  # one line for people
    export: dict[str, Any] | None = None  # the store's entry, when an export was made or reused


def needed(profile: Any, engine: str | None = None) -> tuple[str, str | None] | None:
    """(format, quantization) of the export `engine` (default: the profile's) serves, None when it
    serves the checkpoint itself. Raises UserError for a quantization llama.cpp has no GGUF of."""
    from ernie_ops.serve.profile import GGUF_QUANTIZATIONS

    engine = engine or profile.engine
    if engine == "llamacpp":
        quant = profile.quantization
        if quant in GGUF_QUANTIZATIONS:
            return "gguf", str(quant)
        if quant == "bf16":  # the profile's default: nothing was asked for
            return "gguf", DEFAULT_GGUF
        raise UserError(
            f"quantization {quant!r} is not a GGUF type: the llamacpp engine serves "
            f"{', '.join(GGUF_QUANTIZATIONS)}",
            hint="quantization: q8_0 (or q4_0, f16, f32) in the serve profile or its settings",
        )
    if engine == "vllm":
        return "hf", None
    return None


def prepare(
    profile: Any,
    store: ExportStore,
    say: Callable[[str], None],
    *,
    engine: str | None = None,
    source: Path | str | None = None,
) -> Prepared:
    """What `engine` (default: the profile's) serves of `source` (default: the profile's model; a run
    directory gets the export recorded in its run.json). Raises UserError / ExportFailed when the
    export cannot be made."""
    need = needed(profile, engine)
    src = Path(source if source is not None else profile.model).expanduser()
    if need is None:
        return Prepared(profile, "nothing to prepare: the engine serves the checkpoint itself")
    fmt, quant = need
    if not src.exists():
        return Prepared(profile, f"{src} is not local: served as given")
    if fmt == "gguf" and src.is_file():
        return Prepared(dataclasses.replace(profile, model=str(src)), f"{src.name} is already a GGUF file")
    if fmt == "hf" and not (src / "run.json").is_file() and _layout(src) == "hf":
        return Prepared(
            dataclasses.replace(profile, model=str(src)), f"{src.name} already is in the transformers layout"
        )
    key = f"{fmt}:{quant or '-'}:{src.resolve()}"
    done = store.exports.get(key)
    if done and Path(done["path"]).exists():
        return Prepared(
            dataclasses.replace(profile, model=done["path"]), f"reused {done['path']} (made earlier)", done
        )
    say(f"preparing the {_what(fmt, quant)} export of {src}")
    started = time.perf_counter()
    path, how = _export(store.path / "exports", src, fmt, quant)
    entry = {
        "path": str(path),
        "from": str(src),
        "format": fmt,
        "quantization": quant,
        "how": how,
        "seconds": round(time.perf_counter() - started, 2),
    }
    store.exports[key] = entry
    store.save()
    return Prepared(dataclasses.replace(profile, model=str(path)), f"{how}: {path}", entry)


def describe(export: dict[str, Any]) -> str:
    """'GGUF q4_0' / 'transformers layout', for summaries and reports."""
    return _what(export["format"], export.get("quantization"))


def _what(fmt: str, quant: str | None) -> str:
    return f"GGUF {quant}" if fmt == "gguf" else "transformers layout"


def _layout(path: Path) -> str | None:
    from ernie_ops.train.hf_format import checkpoint_layout

    return checkpoint_layout(path) if (path / "config.json").is_file() else None


def _export(out: Path, source: Path, fmt: str, quant: str | None) -> tuple[Path, str]:
    from ernie_ops.train import export

    if (source / "run.json").is_file():
        recorded = _recorded(source, fmt, quant)
        if recorded is not None:
            return recorded, "the run's recorded export"
        if fmt == "gguf":
            assert quant is not None
            return export.export_gguf(source, quant).path, "exported into the run"
        made = export.export_hf(source)
        _require_verified(made, source)
        return made.path, "exported into the run"
    if not (source / "config.json").is_file():
        raise UserError(
            f"{source} is neither a run directory (run.json) nor a checkpoint directory (config.json)",
            hint="model: a run `ernie-ops train` made, a checkpoint directory, or the exported file itself",
        )
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "gguf":
        assert quant is not None
        target = out / f"{source.name}-{quant}.gguf"
        return export.convert_checkpoint_gguf(source, quant, out=target).path, "converted"
    converted = export.convert_checkpoint(source, "hf", out=out / f"{source.name}-hf")
    _require_verified(converted, source)
    return converted.path, "converted"


def _require_verified(made: Any, source: Path) -> None:
    if not made.report.ok:
        failed = ", ".join(f"{c.name}: {c.detail}" for c in made.report.failed)
        raise UserError(
            f"the transformers-layout export of {source} failed verification ({failed})",
            hint=f"ernie-ops verify {made.path}   # every check, with details",
        )


def _recorded(run: Path, fmt: str, quant: str | None) -> Path | None:
    from ernie_ops.train.record import RunRecord

    exports = RunRecord.load(run).exports.get(fmt) or {}
    entry = exports.get(quant) if fmt == "gguf" else exports
    path = Path(entry["path"]) if isinstance(entry, dict) and entry.get("path") else None
    return path if path is not None and path.exists() else None
