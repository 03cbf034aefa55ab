from __future__ import annotations

import argparse
import json
from pathlib import Path

from ernie_ops.cli.base import Subcommand


class Gc(Subcommand):
    name = "gc"
    help = "delete runs, reports and logs older than the retention period"
    description = (
        "Delete what the toolkit wrote (training runs, pipelines, eval/smoke/bench outputs, reports, "
        "rotated gateway request logs, gateway review items) once it is older than the retention "
        "period: --older-than (one for all), retention.yaml (one per kind: runs, pipelines, eval, "
        "bench, serve logs, gateway_log, review_queue, default; see `python -m pydoc "
        "ernie_ops.privacy.retention`), or ERNIE_OPS_RETENTION. A unit's age is its newest file's. Whole run "
        "directories and files go atomically; a run in progress (its run.lock held by a live "
        "training, a file open in a live process, a pipeline stage running) is never deleted. Lists "
        "what it deleted."
    )
    examples = (
        "ernie-ops gc --older-than 30d --dry-run",
        "ernie-ops gc --older-than 30d",
        "ERNIE_OPS_RETENTION=14d ernie-ops gc runs /data/team-runs --json",
        "ernie-ops gc --config retention.yaml --dry-run",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "dirs", nargs="*", type=Path, metavar="DIR", help="directories with user content (default: runs)"
        )
        parser.add_argument(
            "--older-than", metavar="AGE", help="e.g. 30d, 12h, 2w (default: ERNIE_OPS_RETENTION)"
        )
        parser.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="retention periods by kind (default: ERNIE_OPS_RETENTION_CONFIG, else ./retention.yaml "
            "when there is one)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="list what would be deleted; delete nothing"
        )
        parser.add_argument("--json", action="store_true", help="the result as JSON on stdout")

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.privacy.retention import collect, policy_for

        policy = policy_for(args.older_than, args.config)
        result = collect(args.dirs or list(policy.dirs) or [Path("runs")], policy, args.dry_run)
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
