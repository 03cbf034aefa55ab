from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ernie_ops.cli.base import Subcommand


class Export(Subcommand):
    name = "export"
    help = "turn a finished run into a servable checkpoint (merge LoRA), verify it, record it"
    description = (
        "Export a finished training run. LoRA runs: ERNIEKit's own export merges the adapter into the "
        "base model on CPU and the result appears as RUN_DIR/export/ complete or not at all (ERNIEKit's "
        "log: RUN_DIR/logs/export.log); what its export leaves out of a servable ERNIE 4.5 checkpoint "
        "(generation_config.json, config dtype, file modes) is added. Full runs: the final checkpoint "
        "is used in place. Then the checkpoint is verified (see `ernie-ops verify`) and run.json records "
        "checkpoint, export and the verdict. Exits 1 when the export or the verification fails, 2 for a "
        "directory that is not a finished run."
    )
    examples = (
        "ernie-ops export runs/sft-lora-20261123-101500",
        "ernie-ops export runs/my-run --force --no-forward",
        "ernie-ops export runs/my-run --base-model ~/models/ERNIE-4.5-0.3B-Paddle",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory (has run.json)")
        parser.add_argument(
            "--base-model",
            type=Path,
            metavar="DIR",
            help="LoRA: the base checkpoint to merge into (default: the run's model_name_or_path)",
        )
        parser.add_argument("--force", action="store_true", help="replace an existing RUN_DIR/export")
        parser.add_argument(
            "--no-forward", dest="forward", action="store_false", help="verify without the forward pass"
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    def run(self, args: argparse.Namespace) -> int:
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
