from __future__ import annotations

import argparse
import json
from pathlib import Path

from ernie_ops.cli.base import Subcommand
from ernie_ops.errors import UserError


class Gc(Subcommand):
    name = "gc"
    help = "delete runs, reports and logs older than the retention period"
    description = (
        "Delete what the toolkit wrote (training runs, pipelines, eval/smoke/bench outputs, reports, "
        "rotated gateway request logs, gateway review items) once it is older than the retention "
        "period: --older-than, or ERNIE_OPS_RETENTION. A unit's age is its newest file's. Whole run "
        "directories and files go atomically; a run in progress (its run.lock held by a live "
        "training, a file open in a live process, a pipeline stage running) is never deleted. Lists "
        "what it deleted."
    )
    examples = (
        "ernie-ops gc --older-than 30d --dry-run",
        "ernie-ops gc --older-than 30d",
        "ERNIE_OPS_RETENTION=14d ernie-ops gc runs /data/team-runs --json",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "dirs", nargs="*", type=Path, metavar="DIR", help="directories with user content (default: runs)"
        )
        parser.add_argument(
            "--older-than", metavar="AGE", help="e.g. 30d, 12h, 2w (default: ERNIE_OPS_RETENTION)"
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="list what would be deleted; delete nothing"
        )
        parser.add_argument("--json", action="store_true", help="the result as JSON on stdout")

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.privacy.retention import RETENTION_ENV, collect, default_retention, parse_age

        older_than = parse_age(args.older_than) if args.older_than else default_retention()
        if older_than is None:
            raise UserError(
                "no retention period", hint=f"give --older-than (e.g. 30d) or set {RETENTION_ENV}"
            )
        result = collect(args.dirs or [Path("runs")], older_than, args.dry_run)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
            return 1 if result.errors else 0
        verb = "would delete" if args.dry_run else "deleted"
        for unit in result.deleted:
            print(f"{verb} {unit.path}  ({unit.age / 86400:.1f} days old, {unit.size / 1e6:.1f} MB)")
        for unit in result.kept:
            print(f"kept {unit.path}: {unit.why_kept}")
        for error in result.errors:
            print(f"error: {error}")
        total = sum(u.size for u in result.deleted) / 1e6
        print(f"{verb} {len(result.deleted)} item(s), {total:.1f} MB; kept {len(result.kept)} in use")
        return 1 if result.errors else 0
