"""`ernie-ops pull` and `ernie-ops push`: the model hub, through huggingface_hub (imported in `run`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ernie_ops.cli.base import Subcommand

if TYPE_CHECKING:
    from ernie_ops.hub import UploadPlan

log = logging.getLogger("ernie_ops.hub")


class Pull(Subcommand):
    name = "pull"
    help = "download an ERNIE 4.5 model from the model hub into the directory ERNIEKit reads"
    description = (
        "Download a model snapshot with huggingface_hub into LOCAL_DIR (default: the repo id as a "
        "relative path, which is what the recipes' model_name_or_path names; ERNIEKit does not "
        "download). Interrupted downloads resume when the command is run again. With HF_HUB_OFFLINE=1 "
        "only this machine answers: LOCAL_DIR if it has the files, else the hub cache (linked, not "
        "copied). The token comes from HF_TOKEN or the hub's login and is never printed."
    )
    examples = (
        "ernie-ops pull baidu/ERNIE-4.5-0.3B-Paddle",
        "ernie-ops pull baidu/ERNIE-4.5-21B-A3B-Paddle --local-dir /data/models/21b-a3b",
        "ernie-ops pull baidu/ERNIE-4.5-0.3B-Paddle --include '*.json' 'tokenizer*'   # config + tokenizer",
        "HF_HUB_OFFLINE=1 ernie-ops pull baidu/ERNIE-4.5-0.3B-Paddle   # from this machine only",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("repo_id", metavar="REPO_ID", help="e.g. baidu/ERNIE-4.5-0.3B-Paddle")
        parser.add_argument("--revision", metavar="R", help="branch, tag or commit (default: main)")
        parser.add_argument(
            "--local-dir", type=Path, metavar="D", help="where to put the files (default: ./REPO_ID)"
        )
        parser.add_argument(
            "--include",
            nargs="+",
            action="extend",
            metavar="PATTERN",
            help="only files matching these glob patterns",
        )

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops import hub

        for note in hub.repo_warnings(args.repo_id):
            log.warning(note)
        if getattr(args, "verbosity", 0) < 0:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        try:
            result = hub.pull(
                args.repo_id, revision=args.revision, local_dir=args.local_dir, include=args.include
            )
        except KeyboardInterrupt:
            # Finished files and partial ones are kept: say so, then let main() exit 130.
            print("download interrupted: run the same command again to resume", file=sys.stderr)
            raise
        for note in result.notes:
            log.warning(note)
        print(result.path)
        for line in hub.next_steps(args.repo_id, result.local_dir):
            print(line, file=sys.stderr)
        return 0


class Push(Subcommand):
    name = "push"
    help = "upload a checkpoint to the model hub with a model card (recipe, run record, serve commands)"
    description = (
        "Upload CHECKPOINT (e.g. runs/<run>/export) to REPO_ID in one commit, with a generated README.md "
        "model card: base model, method, the resolved recipe and run record of the run (the parent of "
        "<run>/export, or --run), data fingerprints, versions, and the commands to serve it. The card is "
        "staged beside the upload; CHECKPOINT is never written to. --dry-run prints the card and the "
        "file list without touching the network. Needs a token with write access (HF_TOKEN or the "
        "hub's login); it is never printed."
    )
    examples = (
        "ernie-ops push runs/sft-20250101-120000/export my-org/ernie-4.5-0.3b-support --private",
        "ernie-ops push runs/sft-20250101-120000/export my-org/ernie-4.5-0.3b-support --dry-run",
        "ernie-ops push merged/ my-org/ernie-sft --run runs/sft-20250101-120000 --dry-run card.md",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="directory with config.json")
        parser.add_argument("repo_id", metavar="REPO_ID", help="ORG/NAME to create or update")
        parser.add_argument("--private", action="store_true", help="create the repository private")
        parser.add_argument(
            "--run",
            type=Path,
            metavar="RUN_DIR",
            help="the run directory (default: CHECKPOINT/.. for <run>/export)",
        )
        parser.add_argument(
            "--dry-run",
            nargs="?",
            const="-",
            metavar="CARD",
            help="no upload: write the card to stdout (or to CARD) and list the files",
        )

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops import hub

        plan = hub.plan_push(args.checkpoint, args.repo_id, run_dir=args.run)
        for note in plan.notes:
            log.warning(note)
        if args.dry_run is not None:
            _dry_run(plan, args.dry_run, private=args.private)
            return 0
        url = hub.push(plan, private=args.private)
        print(url)
        return 0


def _dry_run(plan: UploadPlan, card_to: str, *, private: bool) -> None:
    """The card to stdout (or a file) and the file list beside it; stdout carries only the card when
    it is the card's destination, so `--dry-run > README.md` writes a clean card."""
    if card_to == "-":
        sys.stdout.write(plan.card)
        listing = sys.stderr
    else:
        from ernie_ops.files import write_text_atomic

        # never over a file of the upload (its README.md entry is the card itself, not a file)
        write_text_atomic(card_to, plan.card, [path for rel, path in plan.files if rel != "README.md"])
        listing = sys.stdout
        print(f"model card written to {card_to}", file=listing)
    visibility = "private" if private else "public unless it exists already"
    print(f"would upload to {plan.repo_id} ({visibility}):", file=listing)
    total = 0
    for rel, path in plan.files:
        size = len(plan.card.encode("utf-8")) if rel == "README.md" else path.stat().st_size
        total += size
        origin = "generated model card" if rel == "README.md" else str(path)
        print(f"  {rel:40} {_size(size):>10}  {origin}", file=listing)
    print(f"{len(plan.files)} files, {_size(total)}; nothing was uploaded (--dry-run)", file=listing)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
