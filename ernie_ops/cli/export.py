from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ernie_ops.cli.base import Subcommand

FORMATS = ("paddle", "hf", "gguf")
QUANTS = ("f32", "f16", "q8_0", "q4_0", "q4_k_m")  # q4_k_m is refused with the reason (train/gguf_format.py)


class Export(Subcommand):
    name = "export"
    help = "turn a finished run into a servable checkpoint (merge LoRA; Paddle or transformers layout)"
    description = (
        "Export a finished training run. LoRA runs: ERNIEKit's own export merges the adapter into the "
        "base model on CPU and the result appears as RUN_DIR/export/ complete or not at all (ERNIEKit's "
        "log: RUN_DIR/logs/export.log); what its export leaves out of a servable ERNIE 4.5 checkpoint "
        "(generation_config.json, config dtype, file modes) is added. Full runs: the final checkpoint "
        "is used in place. Then the checkpoint is verified (see `ernie-ops verify`) and run.json records "
        "checkpoint, export and the verdict. "
        "--format hf also writes the transformers layout (what vLLM, SGLang, transformers and "
        "llama.cpp's converter read: Ernie4_5ForCausalLM / Ernie4_5_MoeForCausalLM, config.json, "
        "safetensors shards with transformers' tensor names, tokenizer with its chat template, "
        "generation_config.json, a model card) into RUN_DIR/export-hf/ (or --out), verified and recorded "
        "in run.json under exports.hf; it streams tensor by tensor and appears complete or not at all. "
        "Given a checkpoint directory instead of a run, --format hf converts an ERNIEKit (Paddle) "
        "checkpoint and --format paddle a transformers one (e.g. a -PT download), to --out or "
        "<dir>-<format> beside it. --format gguf writes one GGUF file for llama.cpp (ernie4_5 or "
        "ernie4_5-moe, tokenizer and chat template inside) quantized by --quant (f32, f16, q8_0, q4_0; "
        "default f16) into RUN_DIR/export-gguf/<run>-<quant>.gguf (or --out FILE, or "
        "<checkpoint>-<quant>.gguf beside a checkpoint directory), recorded under exports.gguf; it is "
        "what `--engine llamacpp` serves. "
        "Exits 1 when the export or the verification fails, 2 for a directory "
        "that is neither a finished run nor a checkpoint."
    )
    examples = (
        "ernie-ops export runs/sft-lora-20261123-101500",
        "ernie-ops export runs/my-run --format hf                  # also runs/my-run/export-hf/",
        "ernie-ops export runs/my-run --format hf --out models/my-run-hf",
        "ernie-ops export ~/models/ERNIE-4.5-0.3B-Paddle --format hf --out ~/models/ernie-0.3b-hf",
        "ernie-ops export ~/models/ERNIE-4.5-0.3B-PT --format paddle     # -> ERNIE-4.5-0.3B-PT-paddle",
        "ernie-ops export runs/my-run --format gguf --quant q4_0  # runs/my-run/export-gguf/my-run-q4_0.gguf",
        "ernie-ops export runs/my-run --force --no-forward",
        "ernie-ops export runs/my-run --base-model ~/models/ERNIE-4.5-0.3B-Paddle",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "run_dir",
            type=Path,
            metavar="PATH",
            help="the run directory (has run.json), or a checkpoint directory to convert (see --format)",
        )
        parser.add_argument(
            "--format",
            choices=FORMATS,
            default="paddle",
            help="paddle: ERNIEKit's layout (FastDeploy, the embedded server; default); "
            "hf: the transformers layout (vLLM, SGLang, transformers); gguf: one file for llama.cpp",
        )
        parser.add_argument(
            "--quant",
            choices=QUANTS,
            default=None,
            help="--format gguf: the matrices' type (default f16; norms stay f32; q4_k_m is refused: the "
            "gguf package cannot write K-quants)",
        )
        parser.add_argument(
            "--out",
            type=Path,
            metavar="DIR",
            help="where the converted checkpoint goes (default: RUN_DIR/export-hf, or <checkpoint>-<format>)",
        )
        parser.add_argument(
            "--max-shard-size",
            default="5GB",
            metavar="SIZE",
            help="largest safetensors file a conversion writes (default: 5GB, as transformers)",
        )
        parser.add_argument(
            "--base-model",
            type=Path,
            metavar="DIR",
            help="LoRA: the base checkpoint to merge into (default: the run's model_name_or_path)",
        )
        parser.add_argument("--force", action="store_true", help="replace an existing export")
        parser.add_argument(
            "--no-forward", dest="forward", action="store_false", help="verify without the forward pass"
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.errors import UserError
        from ernie_ops.train.hf_format import parse_size
        from ernie_ops.train.record import RUN_FILE

        try:
            shard_bytes = parse_size(args.max_shard_size)
        except ValueError as err:
            raise UserError(f"--max-shard-size: {err}") from None
        is_run = (args.run_dir / RUN_FILE).is_file()
        checkpoint = not is_run and (args.run_dir / "config.json").is_file()
        if args.format == "gguf":
            return self._gguf(args, is_run)
        if args.quant is not None:
            raise UserError(
                "--quant applies to --format gguf", hint="ernie-ops export RUN --format gguf --quant q8_0"
            )
        if args.format == "paddle" and not checkpoint:  # a run (or not: RunRecord says what is wrong)
            if args.out is not None:
                raise UserError(
                    "--out applies to conversions (--format hf, or a checkpoint directory)",
                    hint="a run's Paddle export is RUN_DIR/export/ (LoRA) or its final checkpoint in place",
                )
            return self._paddle_run(args)
        return self._convert(args, is_run, shard_bytes)

    def _paddle_run(self, args: argparse.Namespace) -> int:
        from ernie_ops.cli.verify import print_report
        from ernie_ops.train.export import ExportFailed, export_and_verify

        try:
            result = export_and_verify(
                args.run_dir, base_model=args.base_model, force=args.force, forward=args.forward
            )
        except ExportFailed as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        if args.json:
            out = {
                "exported": str(result.path),
                "format": "paddle",
                "checkpoint": str(result.checkpoint),
                "merged": result.merged,
                "verify": result.report.to_dict(),
            }
            print(json.dumps(out, indent=2))
        else:
            print_report(result.report)
            how = "merged LoRA checkpoint" if result.merged else "final checkpoint, in place"
            print(f"exported: {result.path} ({how}); recorded in {result.record.path / 'run.json'}")
        return 0 if result.report.ok else 1

    def _convert(self, args: argparse.Namespace, is_run: bool, shard_bytes: int) -> int:
        from ernie_ops.cli.verify import print_report
        from ernie_ops.train.export import ExportFailed, LayoutExport, convert_checkpoint, export_hf

        result: LayoutExport
        try:
            if is_run:
                result = export_hf(
                    args.run_dir,
                    out=args.out,
                    base_model=args.base_model,
                    force=args.force,
                    forward=args.forward,
                    max_shard_bytes=shard_bytes,
                    progress=_progress,
                )
            else:
                result = convert_checkpoint(
                    args.run_dir,
                    args.format,
                    out=args.out,
                    force=args.force,
                    forward=args.forward,
                    max_shard_bytes=shard_bytes,
                    progress=_progress,
                )
        except ExportFailed as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        c = result.converted
        if args.json:
            out: dict[str, Any] = {
                "exported": str(result.path),
                "format": args.format,
                "from": str(result.source),
                "architecture": c.architecture,
                "tensors": c.tensors,
                "files": c.shards,
                "bytes": c.bytes,
                "notes": c.notes,
                "verify": result.report.to_dict(),
            }
            print(json.dumps(out, indent=2))
        else:
            print_report(result.report)
            layout = "transformers" if args.format == "hf" else "ERNIEKit (Paddle)"
            print(
                f"exported: {result.path} ({layout} layout, {c.architecture}: {c.tensors} tensors in "
                f"{c.shards} file(s), {c.bytes / 2**20:,.1f} MiB) from {result.source}"
            )
            for note in c.notes:
                print(f"note: {note}")
            if result.record is not None:
                print(f"recorded in {result.record.path / 'run.json'} (exports.{args.format})")
        return 0 if result.report.ok else 1

    def _gguf(self, args: argparse.Namespace, is_run: bool) -> int:
        from ernie_ops.train.export import ExportFailed, GgufResult, convert_checkpoint_gguf, export_gguf

        result: GgufResult
        try:
            if is_run:
                result = export_gguf(
                    args.run_dir,
                    args.quant or "f16",
                    out=args.out,
                    base_model=args.base_model,
                    force=args.force,
                    forward=args.forward,
                    progress=_progress,
                )
            else:
                result = convert_checkpoint_gguf(
                    args.run_dir, args.quant or "f16", out=args.out, force=args.force, progress=_progress
                )
        except ExportFailed as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        done = result.export
        if args.json:
            out: dict[str, Any] = {
                "exported": str(result.path),
                "format": "gguf",
                "quant": done.quant,
                "from": str(result.source),
                "architecture": done.architecture,
                "tensors": done.tensors,
                "bytes": done.bytes,
                "seconds": round(done.seconds, 3),
                "tokenizer": done.tokenizer,
                "notes": done.notes,
            }
            print(json.dumps(out, indent=2))
        else:
            print(
                f"exported: {result.path} (GGUF {done.architecture}, {done.quant}: {done.tensors} tensors, "
                f"{done.bytes / 2**20:,.1f} MiB, {done.seconds:.1f} s) from {result.source}"
            )
            for note in done.notes:
                print(f"note: {note}")
            if result.record is not None:
                print(f"recorded in {result.record.path / 'run.json'} (exports.gguf.{done.quant})")
            print(f"serve it: ernie-ops serve {result.path} --engine llamacpp")
        return 0


def _progress(message: str) -> None:
    """A conversion's steps, on stderr (stdout stays the result, or JSON)."""
    print(message, file=sys.stderr, flush=True)
