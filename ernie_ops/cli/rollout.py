"""`ernie-ops rollout ROLLOUT.yaml`: the controller that carries a candidate through the stages (#19)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ernie_ops.cli.base import Subcommand


class Rollout(Subcommand):
    name = "rollout"
    help = "carry a candidate through shadow / split stages with gates; roll back at the first failed one"
    description = (
        "Drives a running `ernie-ops gateway`, or HAProxy through its runtime API, through the stages "
        "of ROLLOUT.yaml (format: `python -m pydoc ernie_ops.rollout.spec`). Each stage runs for its "
        "minimum duration and request count while the candidate's error rate, TTFT / E2E p99, "
        "agreement with stable (exact on the shadow traffic, or a judge on a suite) and optionally an "
        "eval suite re-run are checked; a failed gate sets all-stable at once and exits 1, all "
        "stages passed promote the candidate (all-candidate) and exit 0. The state is kept on disk: "
        "the same command after a kill continues the stage where it was. The report (rollout.md, "
        "rollout.html with a timeline chart) is written beside the state. HAProxy: "
        "`python -m pydoc ernie_ops.rollout.haproxy`, recipes/rollouts/haproxy.cfg."
    )
    examples = (
        "ernie-ops rollout recipes/rollouts/shadow-then-ramp.yaml",
        "ernie-ops rollout my-rollout.yaml --state runs/rollouts/my-rollout/state.json",
        "ernie-ops rollout my-rollout.yaml gateway=http://gw:8200 interval_s=2",
        "ernie-ops rollout recipes/rollouts/haproxy-ramp.yaml --router haproxy:/run/haproxy/admin.sock "
        "--backend llm --haproxy-log 127.0.0.1:5140",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("spec", type=Path, metavar="ROLLOUT.yaml")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override top-level keys")
        parser.add_argument(
            "--state", type=Path, help="the controller's state file (default runs/rollouts/<name>/state.json)"
        )
        parser.add_argument(
            "--router",
            metavar="gateway:URL|haproxy:SOCKET",
            help="the router instead of the spec's: the gateway's URL, or HAProxy's runtime API "
            "(a unix socket path or host:port)",
        )
        parser.add_argument("--backend", metavar="NAME", help="HAProxy: the backend with the two servers")
        parser.add_argument(
            "--haproxy-log", metavar="HOST:PORT", help="HAProxy: where to receive its httplog (UDP)"
        )

    def run(self, args: argparse.Namespace) -> int:
        import os

        from ernie_ops.errors import UserError
        from ernie_ops.rollout.controller import Controller, GatewayRouter, Router
        from ernie_ops.rollout.report import write
        from ernie_ops.rollout.spec import load_rollout

        spec = load_rollout(args.spec, [*args.overrides, *_router_overrides(args)])
        state = args.state or (
            Path(spec.state) if spec.state else Path("runs/rollouts") / args.spec.stem / "state.json"
        )
        router: Router
        if spec.haproxy is not None:
            from ernie_ops.rollout.haproxy import HaproxyRouter

            router = HaproxyRouter(
                spec.haproxy, state.parent / "haproxy-router.json", spec.stable, spec.candidate
            )
        else:
            key = os.environ.get(spec.admin_key_env)
            if not key:
                raise UserError(
                    f"the environment variable {spec.admin_key_env} is not set",
                    hint="export the gateway's admin key (the one it was started with)",
                )
            assert spec.gateway is not None
            router = GatewayRouter(spec.gateway, key)
        controller = Controller(spec, router, state, say=lambda m: print(m, flush=True))
        try:
            status = controller.run()
        finally:
            md, page = write(spec, controller.state, state.parent)
            print(f"report: {md} {page}")
        return 0 if status == "promoted" else 1


def _router_overrides(args: argparse.Namespace) -> list[str]:
    """--router / --backend / --haproxy-log as overrides of the spec's keys (checked with them)."""
    from ernie_ops.errors import UserError

    if args.router is None:
        if args.backend or args.haproxy_log:
            raise UserError("--backend and --haproxy-log go with --router haproxy:SOCKET")
        return []
    kind, _, where = args.router.partition(":")
    if kind == "gateway" and where:
        return ["haproxy=null", f"gateway={json.dumps(where)}"]
    if kind == "haproxy" and where:
        if not args.backend:
            raise UserError("--router haproxy:SOCKET needs --backend NAME (the backend with the two servers)")
        haproxy = {"socket": where, "backend": args.backend}
        if args.haproxy_log:
            haproxy["log"] = args.haproxy_log
        return ["gateway=null", f"haproxy={json.dumps(haproxy)}"]
    raise UserError(
        f"--router {args.router!r}: expected gateway:URL or haproxy:SOCKET",
        hint="e.g. --router haproxy:/run/haproxy/admin.sock --backend llm",
    )
