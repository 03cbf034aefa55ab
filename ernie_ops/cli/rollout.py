"""`ernie-ops rollout ROLLOUT.yaml`: the controller that carries a candidate through the stages (#19)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ernie_ops.cli.base import Subcommand


class Rollout(Subcommand):
    name = "rollout"
    help = "carry a candidate through shadow / split stages with gates; roll back at the first failed one"
    description = (
        "Drives a running `ernie-ops gateway` through the stages of ROLLOUT.yaml (format: "
        "`python -m pydoc ernie_ops.rollout.spec`). Each stage runs for its minimum duration and "
        "request count while the candidate's error rate, TTFT / E2E p99 and (shadow) agreement with "
        "stable are checked every interval; a failed gate sets all-stable at once and exits 1, all "
        "stages passed promote the candidate (all-candidate) and exit 0. The state is kept on disk: "
        "the same command after a kill continues the stage where it was. A Markdown report of the "
        "timeline is written beside the state."
    )
    examples = (
        "ernie-ops rollout recipes/rollouts/shadow-then-ramp.yaml",
        "ernie-ops rollout my-rollout.yaml --state runs/rollouts/my-rollout/state.json",
        "ernie-ops rollout my-rollout.yaml gateway=http://gw:8200 interval_s=2",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("spec", type=Path, metavar="ROLLOUT.yaml")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override top-level keys")
        parser.add_argument(
            "--state", type=Path, help="the controller's state file (default runs/rollouts/<name>/state.json)"
        )

    def run(self, args: argparse.Namespace) -> int:
        import os

        from ernie_ops.errors import UserError
        from ernie_ops.files import write_text_atomic
        from ernie_ops.rollout.controller import Controller, GatewayRouter, markdown
        from ernie_ops.rollout.spec import load_rollout

        spec = load_rollout(args.spec, args.overrides)
        key = os.environ.get(spec.admin_key_env)
        if not key:
            raise UserError(
                f"the environment variable {spec.admin_key_env} is not set",
                hint="export the gateway's admin key (the one it was started with)",
            )
        state = args.state or (
            Path(spec.state) if spec.state else Path("runs/rollouts") / args.spec.stem / "state.json"
        )
        controller = Controller(
            spec, GatewayRouter(spec.gateway, key), state, say=lambda m: print(m, flush=True)
        )
        try:
            status = controller.run()
        finally:
            report = state.parent / "rollout.md"
            write_text_atomic(report, markdown(spec, controller.state))
            print(f"report: {report}")
        return 0 if status == "promoted" else 1
