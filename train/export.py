"""`ernie-ops export RUN_DIR`: the servable checkpoint of a finished run, verified and recorded.

- LoRA runs: ERNIEKit's own export merges the adapter into the base weights
  (`python -m erniekit.launcher export recipe.yaml lora=True device=cpu ...`). ERNIEKit always
  writes to `<output_dir>/export/`, so it is pointed at a staging directory inside the run (the
  adapter's files symlinked in) and the result is renamed to `<run_dir>/export/` only once it is
  complete: a failure never leaves half an export behind.
- Full runs: the final checkpoint already is servable; it is recorded in place (no copy of the
  weights), after the config fix-ups below.

Then the checkpoint is verified (`ernie_ops.train.verify`) and run.json records checkpoint,
export and verification.

`--format hf` goes one step further: that verified Paddle checkpoint is converted to the
transformers layout (`ernie_ops.train.hf_format`) in `<run_dir>/export-hf/`, verified in turn and
recorded under run.json's `exports.hf`. Any checkpoint directory converts the same way, both ways.

`--format gguf --quant Q` writes one GGUF file for llama.cpp (`ernie_ops.train.gguf_format`) into
`<run_dir>/export-gguf/<run>-<Q>.gguf`, recorded under `exports.gguf.<Q>`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ernie_ops.catalog import GENERATION_DEFAULTS
from ernie_ops.errors import UserError
from ernie_ops.supervise import read_tail, start
from ernie_ops.train.hf_format import (
    DEFAULT_SHARD_BYTES,
    HF,
    PADDLE,
    Converted,
    checkpoint_layout,
    convert,
)
from ernie_ops.train.record import EXPORT_DIR, HF_EXPORT_DIR, LOG_DIR, RECIPE_FILE, RunRecord, checkpoints
from ernie_ops.train.verify import (
    CONFIG,
    DENSE_ARCH,
    GENERATION_CONFIG,
    MOE_ARCH,
    PREPROCESSOR_CONFIG,
    TOKENIZER_FILES,
    VerifyReport,
    is_moe,
    load_tensors,
    verify_checkpoint,
    weight_files,
    weights_dtype,
)

log = logging.getLogger(__name__)

GGUF = "gguf"
GGUF_EXPORT_DIR = "export-gguf"  # beside export/ and export-hf/

EXPORT_LOG = "export.log"
LOG_TAIL = 15  # lines of ERNIEKit's log quoted when its export fails


class ExportFailed(Exception):
    """ERNIEKit's export did not produce a checkpoint; the message quotes the end of its log."""


@dataclass
class ExportResult:
    path: Path  # the servable checkpoint
    checkpoint: Path  # the training checkpoint it came from (the adapter for LoRA)
    merged: bool  # a LoRA merge was run
    report: VerifyReport
    record: RunRecord


def export_run(run_dir: Path | str, **options: Any) -> Path:
    """Export and verify a finished run; the servable checkpoint's path (see `export_and_verify`)."""
    return export_and_verify(run_dir, **options).path


def export_and_verify(
    run_dir: Path | str,
    *,
    base_model: Path | str | None = None,
    force: bool = False,
    forward: bool = True,
    timeout: float | None = None,
) -> ExportResult:
    """Export a finished run (merge LoRA, or locate the full checkpoint), verify it, record both."""
    run_dir = Path(run_dir).resolve()
    record = RunRecord.load(run_dir)
    record.run_dir = str(run_dir)  # a moved run directory still saves where it is now
    _require_succeeded(record)
    output = _output_dir(record)
    if record.is_lora:
        checkpoint = _final_checkpoint(output, _is_adapter, "a LoRA adapter (lora_config.json + weights)")
        base = _base_model(record, base_model)
        path = merge_lora(run_dir, checkpoint, base, force=force, timeout=timeout)
    else:
        checkpoint = _final_checkpoint(output, _has_model_weights, "model weights (model.safetensors)")
        path = checkpoint
        for change in fix_config(path / CONFIG, weights_dtype(load_tensors(path)[0])):
            log.info("%s: %s", path / CONFIG, change)
        _readable(path, weight_files(path)[1])
    log.info("verifying %s", path)
    report = verify_checkpoint(path, forward=forward)
    record.checkpoint, record.exported, record.verified = str(checkpoint), str(path), report.ok
    record.save()
    return ExportResult(path, checkpoint, record.is_lora, report, record)


# ---------------------------------------------------------------------------------------------
# other layouts: the transformers one (and back), see train/hf_format.py


@dataclass
class LayoutExport:
    path: Path  # what was written
    source: Path  # the checkpoint converted
    converted: Converted
    report: VerifyReport
    record: RunRecord | None  # the run it was recorded in
    paddle: ExportResult | None = None  # the Paddle export run on the way (None: an earlier one reused)


def export_hf(
    run_dir: Path | str,
    *,
    out: Path | str | None = None,
    base_model: Path | str | None = None,
    force: bool = False,
    forward: bool = True,
    timeout: float | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: Callable[[str], None] | None = None,
) -> LayoutExport:
    """The transformers layout of a finished run: its servable Paddle checkpoint (exported and
    verified first unless a verified one is recorded), converted into `<run_dir>/export-hf/` (or
    `out`), verified, and recorded in run.json under exports.hf."""
    run_dir = Path(run_dir).resolve()
    source, record, paddle = _paddle_source(run_dir, base_model, force, forward, timeout)
    target = Path(out).expanduser() if out else run_dir / HF_EXPORT_DIR
    card = {"name": record.name, "run": record.name, "base_model": _hub_id(record.model_name_or_path)}
    converted = convert(
        source, target, HF, force=force, card=card, max_shard_bytes=max_shard_bytes, progress=progress
    )
    log.info("verifying %s", converted.path)
    report = verify_checkpoint(converted.path, forward=forward)
    record.exports[HF] = {
        "path": str(converted.path),
        "from": str(source),
        "verified": report.ok,
        "tensors": converted.tensors,
        "files": converted.shards,
        "bytes": converted.bytes,
    }
    record.save()
    return LayoutExport(converted.path, source, converted, report, record, paddle)


def convert_checkpoint(
    path: Path | str,
    to: str,
    *,
    out: Path | str | None = None,
    force: bool = False,
    forward: bool = True,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: Callable[[str], None] | None = None,
) -> LayoutExport:
    """Convert a checkpoint directory (not a run) to layout `to`, into `out` (default: beside it,
    named `<name>-<to>`), and verify the result."""
    path = _checkpoint_dir(path)
    layout = checkpoint_layout(path)
    if layout == to:
        what = "an ERNIEKit (Paddle)" if to == PADDLE else "a transformers"
        raise UserError(
            f"{path} already is {what} checkpoint",
            hint=f"check it with `ernie-ops verify {path}`",
        )
    target = Path(out).expanduser() if out else path.parent / f"{path.name}-{to}"
    card = {"name": path.name}
    converted = convert(
        path, target, to, force=force, card=card, max_shard_bytes=max_shard_bytes, progress=progress
    )
    report = verify_checkpoint(converted.path, forward=forward)
    return LayoutExport(converted.path, path, converted, report, None)


# ---------------------------------------------------------------------------------------------
# GGUF (llama.cpp), see train/gguf_format.py


@dataclass
class GgufResult:
    path: Path  # the .gguf file
    source: Path  # the checkpoint converted
    export: Any  # gguf_format.GgufExport
    record: RunRecord | None
    paddle: ExportResult | None = None


def export_gguf(
    run_dir: Path | str,
    quant: str,
    *,
    out: Path | str | None = None,
    base_model: Path | str | None = None,
    force: bool = False,
    forward: bool = True,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> GgufResult:
    """A finished run as one GGUF file for llama.cpp: its verified Paddle export (made first unless
    recorded) converted into `<run_dir>/export-gguf/<run>-<quant>.gguf` (or `out`), recorded in
    run.json under exports.gguf.<quant>."""
    from ernie_ops.train import gguf_format

    quant = gguf_format.check_quant(quant)
    run_dir = Path(run_dir).resolve()
    source, record, paddle = _paddle_source(run_dir, base_model, force, forward, timeout)
    target = Path(out).expanduser() if out else run_dir / GGUF_EXPORT_DIR / f"{record.name}-{quant}.gguf"
    done = gguf_format.convert(source, target, quant, force=force, name=record.name, progress=progress)
    entry = {
        "path": str(done.path),
        "from": str(source),
        "tensors": done.tensors,
        "bytes": done.bytes,
    }
    record.exports.setdefault(GGUF, {})[quant] = entry
    record.save()
    return GgufResult(done.path, source, done, record, paddle)


def convert_checkpoint_gguf(
    path: Path | str,
    quant: str,
    *,
    out: Path | str | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> GgufResult:
    """A checkpoint directory (either layout) as one GGUF file: `out`, default `<dir>-<quant>.gguf`
    beside it."""
    from ernie_ops.train import gguf_format

    quant = gguf_format.check_quant(quant)
    path = _checkpoint_dir(path)
    target = Path(out).expanduser() if out else path.parent / gguf_format.default_name(path, quant)
    done = gguf_format.convert(path, target, quant, force=force, progress=progress)
    return GgufResult(done.path, path, done, None)


def _paddle_source(
    run_dir: Path, base_model: Path | str | None, force: bool, forward: bool, timeout: float | None
) -> tuple[Path, RunRecord, ExportResult | None]:
    """What another layout is converted from: the run's verified Paddle export, made (and verified)
    first unless one is recorded; (source, the run's record, the export made on the way or None)."""
    record = RunRecord.load(run_dir)
    record.run_dir = str(run_dir)
    _require_succeeded(record)
    recorded = Path(record.exported) if record.exported else None
    if recorded is not None and record.verified and (recorded / CONFIG).is_file():
        log.info("converting the run's verified export %s", recorded)
        return recorded, record, None
    paddle = export_and_verify(run_dir, base_model=base_model, force=force, forward=forward, timeout=timeout)
    if not paddle.report.ok:
        failed = ", ".join(c.name for c in paddle.report.failed)
        raise ExportFailed(
            f"the Paddle export {paddle.path} failed verification ({failed}); nothing was converted"
        )
    return paddle.path, paddle.record, paddle


def _checkpoint_dir(path: Path | str) -> Path:
    path = Path(path).resolve()
    if not (path / CONFIG).is_file():
        raise UserError(
            f"{path} is neither a run directory (run.json) nor a checkpoint directory ({CONFIG})",
            hint="give a run `ernie-ops train` created or a checkpoint directory",
        )
    return path


def _hub_id(name: str | None) -> str | None:
    """NAME when it reads as a hub repository id (`org/model`), never a local path: the model card
    is published with the weights."""
    if not name or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) or Path(name).exists():
        return None
    return name


def _require_succeeded(record: RunRecord) -> None:
    if record.status == "succeeded":
        return
    why = f": {record.failure}" if record.failure else ""
    raise UserError(
        f"run {record.name} did not succeed (status {record.describe_status()}{why}); nothing to export",
        where=record.run_dir,
        hint=f"see {Path(record.run_dir) / LOG_DIR / 'train.log'}; export a run whose status is succeeded",
    )


def _output_dir(record: RunRecord) -> Path:
    output = Path(record.output_dir) if record.output_dir else None
    if output is None or not output.is_dir():
        raise UserError(
            f"the run's output directory {record.output_dir or '(none recorded)'} does not exist",
            where=record.run_dir,
            hint="ERNIEKit's output_dir holds the checkpoint; was it moved or deleted?",
        )
    return output


def _has_model_weights(path: Path) -> bool:
    return bool(weight_files(path)[1])


def _is_adapter(path: Path) -> bool:
    # ERNIEKit's own test (is_valid_model_dir): a weights file next to the LoRA config
    weights = any(p.is_file() and p.suffix in (".safetensors", ".pdparams") for p in path.iterdir())
    return (path / "lora_config.json").is_file() and weights


def _final_checkpoint(output: Path, complete: Callable[[Path], bool], what: str) -> Path:
    """ERNIEKit's rule: output_dir itself when it holds the weights, else the highest checkpoint-N."""
    if complete(output):
        return output
    steps = [p for p in checkpoints(output) if complete(p)]
    if not steps:
        raise UserError(
            f"no checkpoint in {output}: neither it nor a checkpoint-N directory holds {what}",
            hint="the run ended before ERNIEKit saved; check save_steps / max_steps in the recipe",
        )
    return steps[-1]


def _base_model(record: RunRecord, override: Path | str | None) -> Path:
    """The base checkpoint the adapter was trained on; the merge needs its weights on disk."""
    name = str(override or record.model_name_or_path or _recipe_value(record, "model_name_or_path") or "")
    candidates = [Path(name).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(Path(record.run_dir) / name)
    for path in candidates:
        if name and (path / CONFIG).is_file():
            return path.resolve()
    raise UserError(
        f"the base model {name or '(none recorded)'} is not a local checkpoint directory",
        where=record.run_dir,
        hint="merging LoRA needs the base weights on disk: pass --base-model DIR",
    )


def _recipe_value(record: RunRecord, key: str) -> Any:
    import yaml

    recipe = Path(record.run_dir) / RECIPE_FILE
    if not recipe.is_file():
        return None
    values = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    return values.get(key) if isinstance(values, dict) else None


# ---------------------------------------------------------------------------------------------
# the LoRA merge


def merge_lora(
    run_dir: Path, adapter: Path, base: Path, *, force: bool = False, timeout: float | None = None
) -> Path:
    """Merge `adapter` into `base` with ERNIEKit's export; `<run_dir>/export/` appears complete or
    not at all."""
    target = run_dir / EXPORT_DIR
    if target.exists() and not force:
        raise UserError(
            f"{target} already exists",
            hint=f"pass --force to export again, or check it with `ernie-ops verify {target}`",
        )
    recipe = run_dir / RECIPE_FILE
    if not recipe.is_file():
        raise UserError(f"{recipe} is missing; ERNIEKit's export reads the run's recipe", where=str(run_dir))
    staging = Path(tempfile.mkdtemp(prefix=f".{EXPORT_DIR}-", dir=run_dir))  # same filesystem: rename
    try:
        # ERNIEKit writes <output_dir>/export and reads the adapter from output_dir, so the staging
        # output_dir gets the adapter's files as symlinks (nothing big is copied)
        work = staging / "output"
        work.mkdir()
        for file in adapter.iterdir():
            if file.is_file():
                (work / file.name).symlink_to(file.resolve())
        produced = _erniekit_export(recipe, base, work, run_dir / LOG_DIR / EXPORT_LOG, timeout)
        complete_export(produced, base, adapter)
        _replace(target, produced, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s", target)
    return target


def _erniekit_export(recipe: Path, base: Path, work: Path, log_file: Path, timeout: float | None) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "erniekit.launcher",  # `erniekit export` would go through its GPU launcher
        "export",
        str(recipe),
        "lora=True",
        "device=cpu",  # ERNIEKit refuses a LoRA merge on "gpu"; on CPU it merges in numpy
        f"model_name_or_path={base}",
        f"output_dir={work}",
    ]
    log.info("merging the LoRA adapter into %s with ERNIEKit's export (log: %s)", base, log_file)
    rc = _run_logged(cmd, log_file, cwd=work.parent, timeout=timeout)
    produced = work / EXPORT_DIR
    if rc != 0:
        raise ExportFailed(_failure(f"ERNIEKit's export exited with status {rc}", log_file))
    if not produced.is_dir() or not _has_model_weights(produced):
        raise ExportFailed(_failure("ERNIEKit's export ended without writing merged weights", log_file))
    # the merge runs in worker processes whose exceptions are printed but not propagated: ERNIEKit
    # then logs "Successfully finished merging", exits 0 and leaves an index naming shards it never
    # wrote. Only the output itself tells, so compare it with the base.
    merged, problems = load_tensors(produced)
    lost = sorted(set(load_tensors(base)[0]) - set(merged))
    if problems or lost:
        what = "; ".join(problems) or f"{len(lost)} base tensor(s) missing, e.g. {lost[0]}"
        raise ExportFailed(
            _failure(f"ERNIEKit's export exited 0 but its output is incomplete ({what})", log_file)
        )
    return produced


def _run_logged(cmd: list[str], log_file: Path, cwd: Path, timeout: float | None) -> int:
    """Run CMD to its end with its output in LOG_FILE; a timeout or Ctrl-C stops its whole tree (the
    merge runs in worker processes)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_file.open("w", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        child = start(cmd, env=env, cwd=cwd, stdout=out)
        try:
            return child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as err:
            child.stop()
            message = f"ERNIEKit's export did not finish in {timeout:.0f} s"
            raise ExportFailed(_failure(message, log_file)) from err
        except BaseException:  # Ctrl-C: do not leave the merge running behind us
            child.stop()
            raise
        finally:
            child.stop()  # workers a finished merge left behind


def _failure(message: str, log_file: Path) -> str:
    tail = "\n".join(f"  | {line}" for line in read_tail(log_file, limit=LOG_TAIL))
    return f"{message}; nothing was exported. Last lines of {log_file}:\n{tail}"


def _replace(target: Path, produced: Path, staging: Path) -> None:
    """Move the finished export into place; an old one (--force) is set aside first, then removed
    with the staging directory."""
    if target.exists():
        target.rename(staging / "previous")
    produced.rename(target)


# ---------------------------------------------------------------------------------------------
# what ERNIEKit's export leaves out


def complete_export(export: Path, base: Path, adapter: Path) -> None:
    """Make ERNIEKit's merged output a checkpoint that serves like the public ERNIE 4.5 ones."""
    config = export / CONFIG
    if not config.is_file():
        # ERNIEKit copies the base's config.json and only logs at DEBUG when there is none; the
        # adapter directory has the config ERNIEKit trained with
        _copy_first(CONFIG, export, adapter)
    for change in fix_config(config, weights_dtype(load_tensors(export)[0])):
        log.info("export config.json: %s", change)
    # ERNIEKit copies tokenizer.model, tokenizer_config.json and special_tokens_map.json from the
    # base (silently skipping missing ones) and never generation_config.json (sampling defaults and
    # eos for servers) nor preprocessor_config.json (VL image processing)
    for name in (*TOKENIZER_FILES, "added_tokens.json", GENERATION_CONFIG, PREPROCESSOR_CONFIG):
        if not (export / name).exists():
            _copy_first(name, export, base, adapter)
    if not (export / GENERATION_CONFIG).exists():
        _write_generation_defaults(export)
    _ensure_chat_template(export / "tokenizer_config.json", adapter / "tokenizer_config.json")
    _readable(export, [p.name for p in export.iterdir() if p.is_file()])


def fix_config(path: Path, dtype: str | None) -> list[str]:
    """Make config.json a Paddle ERNIE 4.5 config; the changes made, in words."""
    config = json.loads(path.read_text(encoding="utf-8"))
    changes = []
    torch_dtype = config.pop("torch_dtype", None)
    if torch_dtype is not None:
        # a PyTorch (Hugging Face) key: Paddle loaders read "dtype", and its presence makes the
        # checkpoint look like a PyTorch one to tools that tell the two apart by it
        changes.append(f'removed "torch_dtype": {torch_dtype!r}')
    if "dtype" not in config and (dtype or torch_dtype):
        # ERNIEKit's trained config.json has no "dtype" (its config class does not save one);
        # without it PaddleFormers falls back to float32 whatever the weights are
        config["dtype"] = dtype or torch_dtype
        changes.append(f'set "dtype": {config["dtype"]!r} (the dtype of the weights)')
    if not is_moe(config) and config.get("architectures") == [MOE_ARCH]:
        # ERNIEKit saves every model as its MoE class; a model without experts is the dense
        # architecture, which FastDeploy dispatches on (as in ERNIE-4.5-0.3B's own config.json)
        config.update(architectures=[DENSE_ARCH], model_type="ernie4_5")
        changes.append(f"architectures {MOE_ARCH} -> {DENSE_ARCH} (no experts)")
    if changes:
        _write_json(path, config)
    return changes


def _copy_first(name: str, dest: Path, *sources: Path) -> None:
    for source in sources:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
            return


def _write_generation_defaults(export: Path) -> None:
    config = json.loads((export / CONFIG).read_text(encoding="utf-8"))
    ids = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    _write_json(export / GENERATION_CONFIG, {**GENERATION_DEFAULTS, **ids})


def _ensure_chat_template(path: Path, fallback: Path) -> None:
    """A base without a chat template (a pre-trained, not chat, model) gets the one the run trained
    with: ERNIEKit's data pipeline formats every example with it, so that is what the model learnt."""
    if not path.is_file() or not fallback.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    template = json.loads(fallback.read_text(encoding="utf-8")).get("chat_template")
    if not config.get("chat_template") and template:
        config["chat_template"] = template
        _write_json(path, config)


def _readable(directory: Path, names: list[str]) -> None:
    # safetensors' save_file creates files with mode 0600 (ERNIEKit's merged shard, its full
    # checkpoints); a server running as another user (a container, a service account) could not
    # read them. Give them the mode any other file gets here (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    for name in names:
        file = directory / name
        if file.is_file() and not file.is_symlink():
            file.chmod(0o666 & ~umask)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
