from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ernie_ops.cli.base import Subcommand, add_mask_argument, masking_for


class Train(Subcommand):
    name = "train"
    help = "run an ERNIEKit recipe: check, run record, launch (CPU, GPUs, nodes), progress, watchdog"
    description = (
        "Check the recipe (and lint its data), create a run directory (resolved recipe, run.json with "
        "versions, data fingerprints, command and outcome, logs, metrics.jsonl, loss.png), launch ERNIEKit "
        "(one CPU process, or paddle.distributed.launch on GPUs and nodes) and follow it with a progress "
        "bar. A run that stops making progress, whose data loader dies, or whose files no longer fit on "
        "the disk is stopped and explained. The trainer dies with ernie-ops (even when that is killed) "
        "and a run is locked while it is live: --resume refuses a live run, and reports one whose "
        "owner is gone. An output_dir holding another run's checkpoints is refused (see --force). "
        "Exit 0 succeeded, 1 failed / stopped / refused by the check, 2 usage error, 130 interrupted "
        "(128+N for signal N)."
    )
    examples = (
        "ernie-ops train recipes/tiny/sft_cpu.yaml",
        "ernie-ops train recipes/ERNIE-4.5-21B-A3B/sft_lora_8k.yaml train_dataset_path=my.jsonl --gpus 0",
        "ernie-ops train recipes/ERNIE-4.5-300B-A47B/sft_wint4_lora_8k.yaml --gpus 0,1,2,3",
        "ernie-ops train my.yaml --gpus 0,1,2,3,4,5,6,7 --nnodes 2 --master 10.0.0.1:8080   # on each node",
        "ernie-ops train my.yaml --dry-run",
        "ernie-ops train --resume runs/sft_cpu-20261123-101500",
        "ernie-ops train --resume runs/sft_cpu-20261123-101500 max_steps=600   # train a run further",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("recipe", nargs="?", type=Path, metavar="RECIPE.yaml")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="ERNIEKit-style overrides")
        parser.add_argument("--run-name", help="run directory name (default: the recipe's file name)")
        parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run directories go")
        parser.add_argument("--gpus", help="GPU indices like 0,1,2,3, or cpu (default: every visible GPU)")
        parser.add_argument("--nnodes", type=int, default=1, help="nodes (run the same command on each)")
        parser.add_argument("--master", metavar="IP:PORT", help="first node's address (with --nnodes > 1)")
        parser.add_argument("--dry-run", action="store_true", help="print the resolved recipe and command")
        parser.add_argument(
            "--resume",
            type=Path,
            metavar="RUN_DIR",
            help="continue a run from its last checkpoint; key=value overrides after it are applied to "
            "its recipe (max_steps=N trains a finished run further)",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="with --resume: resume even though recipe.yaml changed; for a new run: train from scratch "
            "into an output_dir that holds another run's checkpoints (they are moved to "
            "OUTPUT_DIR/replaced-<run>/, not deleted)",
        )
        parser.add_argument(
            "--stall-timeout",
            type=float,
            default=1800.0,
            metavar="S",
            help="stop a run with no new log line for S seconds (default 1800)",
        )
        parser.add_argument("--echo", action="store_true", help="also print ERNIEKit's own log lines")
        add_mask_argument(parser)  # ERNIEKit logs the examples it skips, whole: masked in logs/train.log

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.errors import UserError
        from ernie_ops.train.launch import parse_gpus
        from ernie_ops.train.run import CheckFailed, TrainOptions, train

        overrides = list(args.overrides)
        if args.resume is not None and args.recipe is not None:
            if "=" not in str(args.recipe) or args.recipe.is_file():
                raise UserError(
                    f"--resume continues {args.resume} with its own recipe.yaml: {args.recipe} is not used",
                    hint="drop the recipe to resume (key=value overrides are applied to the run), or drop "
                    "--resume to start a new run",
                )
            overrides.insert(0, str(args.recipe))  # argparse took the first key=value for the recipe
            args.recipe = None
        if args.recipe is None and args.resume is None:
            raise UserError("give a recipe, or --resume RUN_DIR", hint="ernie-ops train --help")
        if args.recipe is not None:
            from ernie_ops.files import regular_file

            if not args.recipe.exists() and not args.recipe.is_symlink():
                raise UserError(f"{args.recipe}: no such recipe file")
            regular_file(args.recipe, "recipe")  # a FIFO, a device or a symlink loop: said as such
        gpus = None if args.gpus is None else [] if args.gpus.lower() == "cpu" else parse_gpus(args.gpus)
        options = TrainOptions(
            recipe=args.recipe,
            overrides=tuple(overrides),
            run_name=args.run_name,
            runs_dir=args.runs_dir,
            gpus=gpus,
            nnodes=args.nnodes,
            master=args.master,
            dry_run=args.dry_run,
            resume=args.resume,
            force=args.force,
            stall_seconds=args.stall_timeout,
            echo=args.echo,
        )
        try:
            with masking_for(args):
                record, outcome = train(options)
        except CheckFailed as err:
            print(f"refused: {err}", file=sys.stderr)
            return 1
        if outcome is None:
            return 0
        print(f"{record.status}: {record.name}, step {record.last_step or 0}/{record.max_steps or '?'}")
        print(f"  run directory: {record.run_dir}")
        if record.checkpoint:
            print(f"  checkpoint:    {record.checkpoint}")
        if outcome.failure:
            print(f"  why: {outcome.failure}", file=sys.stderr)
            tail = [line if len(line) <= 240 else line[:240] + " ..." for line in outcome.tail[-15:]]
            print(
                "  last log lines (all of them in logs/train.log):\n    " + "\n    ".join(tail),
                file=sys.stderr,
            )
        if record.status == "interrupted":
            print(f"  resume with: ernie-ops train --resume {record.run_dir}", file=sys.stderr)
            return 128 + (outcome.signum or signal.SIGINT)
        return 0 if record.status == "succeeded" else 1
