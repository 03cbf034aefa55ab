from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ernie_ops.cli.base import Subcommand

if TYPE_CHECKING:
    from ernie_ops.train.verify import VerifyReport

MARK = {"ok": "ok  ", "skip": "skip", "fail": "FAIL"}


class Verify(Subcommand):
    name = "verify"
    help = "check that a checkpoint directory is a servable ERNIE 4.5 checkpoint (Paddle or transformers)"
    description = (
        "Check a checkpoint before serving it. The layout is told by the tensor names: ERNIEKit's "
        "(Paddle: ernie.*, Linear weights [in, out], fused qkv / up_gate) or transformers' (model.*, "
        "[out, in], what `export --format hf` writes). Paddle: a Paddle config.json (dtype, no "
        "torch_dtype) with an ERNIE 4.5 architecture; transformers: Ernie4_5ForCausalLM / "
        "Ernie4_5_MoeForCausalLM with its model_type. Both: safetensors weights whose index, shards and "
        "tensor names and shapes agree with the config (headers only, nothing loaded) and every layer "
        "present; tokenizer files with a chat template; generation_config.json (and "
        "preprocessor_config.json for VL); and, where it fits in memory, a forward pass on CPU with "
        "ERNIEKit's model class (dense Paddle checkpoints) or transformers' (any transformers-layout "
        "one, with the `torch` extra). Exits 1 when a check fails."
    )
    examples = (
        "ernie-ops verify runs/my-run/export",
        "ernie-ops verify runs/my-run                 # the run's exported checkpoint",
        "ernie-ops verify runs/my-run/export-hf       # its transformers layout",
        "ernie-ops verify ~/models/ERNIE-4.5-0.3B-Paddle --no-forward --json",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "checkpoint", type=Path, metavar="CHECKPOINT", help="a checkpoint directory, or a run directory"
        )
        parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
        parser.add_argument(
            "--no-forward", dest="forward", action="store_false", help="skip the forward pass"
        )

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.train.verify import verify_checkpoint

        report = verify_checkpoint(_checkpoint_of(args.checkpoint), forward=args.forward)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            print_report(report)
        return 0 if report.ok else 1


def _checkpoint_of(path: Path) -> Path:
    """A run directory stands for its export (or, not exported yet, its final checkpoint)."""
    from ernie_ops.train.record import RUN_FILE, RunRecord

    if (path / "config.json").exists() or not (path / RUN_FILE).is_file():
        return path
    record = RunRecord.load(path)
    target = record.exported or record.checkpoint
    if target is None:
        from ernie_ops.errors import UserError

        raise UserError(
            f"run {record.name} has no checkpoint recorded yet",
            where=str(path),
            hint=f"export it first: ernie-ops export {path}",
        )
    print(f"verifying {target} (from {path / RUN_FILE})", file=sys.stderr)
    return Path(target)


def print_report(report: VerifyReport) -> None:
    print(report.path)
    width = max(len(c.name) for c in report.checks)
    for c in report.checks:
        print(f"{MARK.get(c.status, c.status)}  {c.name:{width}}  {c.detail}".rstrip())
    failed = [c.name for c in report.failed]
    print("\n" + (f"verification failed: {', '.join(failed)}" if failed else "checkpoint verified"))
