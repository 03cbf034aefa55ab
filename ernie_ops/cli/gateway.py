"""`ernie-ops gateway`: the OpenAI-compatible front for a stable and a candidate endpoint (#19)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ernie_ops.argtypes import age, percent, positive_float, positive_int, unit_interval
from ernie_ops.cli.base import Subcommand

ADMIN_KEY_ENV = "ERNIE_OPS_GATEWAY_ADMIN_KEY"
MODES = ("shadow", "split", "all-stable", "all-candidate")  # as ernie_ops.rollout.routing.MODES


class Gateway(Subcommand):
    name = "gateway"
    help = "an OpenAI-compatible gateway in front of a stable and a candidate endpoint (shadow, split)"
    description = (
        "Run the gateway (`run`), or read and change a running gateway's mode and candidate weight "
        "(`status`, `set`). Modes: shadow (clients get stable, a copy goes to the candidate and the "
        "answers are compared), split (WEIGHT percent to the candidate, sticky per user or session "
        "key), all-stable, all-candidate. The mode and weight are kept in a state file that a "
        "restarted gateway continues from; /metrics has per-backend Prometheus metrics, and a JSONL "
        "request log (no content) is kept with rotation and a retention period. Wrong-looking answers "
        "(a shadow disagreement; an answer to a --judge-suite prompt its judge scores low) go to the "
        "review queue, PII-masked, for `ernie-ops review`."
    )
    examples = (
        "ernie-ops gateway run --stable 127.0.0.1:8180 --candidate 127.0.0.1:8181 --mode shadow",
        "ernie-ops gateway run --stable 127.0.0.1:8180 --judge-suite probes.jsonl --retention 14d",
        f"{ADMIN_KEY_ENV}=... ernie-ops gateway set http://127.0.0.1:8200 --mode split --weight 5",
        f"{ADMIN_KEY_ENV}=... ernie-ops gateway status http://127.0.0.1:8200",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        run = self._action(actions, "run", "run the gateway until Ctrl-C / SIGTERM", 0)
        run.add_argument("--stable", required=True, metavar="URL", help="the endpoint clients get today")
        run.add_argument("--candidate", metavar="URL", help="the endpoint being rolled out")
        run.add_argument("--stable-model", help="its served model name (default: the first it lists)")
        run.add_argument("--candidate-model", help="its served model name (default: the first it lists)")
        run.add_argument("--stable-key-env", metavar="VAR", help="environment variable with stable's API key")
        run.add_argument(
            "--candidate-key-env", metavar="VAR", help="environment variable with the candidate's API key"
        )
        run.add_argument(
            "--mode",
            choices=MODES,
            default="all-stable",
            help="the starting mode when the state file has none (default all-stable)",
        )
        run.add_argument(
            "--weight", type=percent, default=0.0, help="candidate percent in split mode (default 0)"
        )
        run.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
        run.add_argument("--port", type=int, default=8200, help="default 8200 (0: a free port, printed)")
        run.add_argument(
            "--state",
            type=Path,
            default=Path("runs/gateway/state.json"),
            help="the routing state file (default runs/gateway/state.json); its mode and weight win "
            "over --mode / --weight",
        )
        run.add_argument(
            "--log-dir",
            type=Path,
            default=Path("runs/gateway/requests"),
            help="the JSONL request log (default runs/gateway/requests)",
        )
        run.add_argument("--no-log", action="store_true", help="keep no request log")
        run.add_argument(
            "--log-max-mb", type=positive_float, default=100.0, help="rotate past this size (default 100)"
        )
        run.add_argument(
            "--retention",
            type=age,
            metavar="AGE",
            help="delete rotated logs and review items older than this, e.g. 30d, 12h, 2w (default: "
            "gateway_log of retention.yaml or ERNIE_OPS_RETENTION, as `ernie-ops gc` reads them; else 30d)",
        )
        run.add_argument(
            "--review-dir",
            type=Path,
            default=Path("runs/gateway/review"),
            help="the review queue (default runs/gateway/review; `ernie-ops review` reads it)",
        )
        run.add_argument("--no-review", action="store_true", help="keep no review queue")
        run.add_argument(
            "--review-queue",
            type=positive_int,
            default=256,
            help="review items waiting to be written at most; more are dropped and counted (default 256)",
        )
        run.add_argument(
            "--judge-suite",
            type=Path,
            metavar="SUITE",
            help="an eval suite (JSONL, as `ernie-ops eval`): answers to its prompts are scored by "
            "their judge and those below --judge-min-score go to the review queue",
        )
        run.add_argument(
            "--judge-min-score",
            type=unit_interval,
            default=1.0,
            help="the score an answer needs to pass, 0 to 1 (default 1: anything less is reviewed)",
        )
        run.add_argument(
            "--no-mask",
            dest="mask",
            action="store_false",
            help="keep personal data unmasked in the review items and the logged content (masked by "
            "default; every item and content line then says masked: false)",
        )
        run.add_argument(
            "--log-content",
            action="store_true",
            help="log prompts and answers too, PII-masked (ernie_ops.privacy; default: figures only)",
        )
        run.add_argument(
            "--admin-key-env",
            default=ADMIN_KEY_ENV,
            metavar="VAR",
            help=f"environment variable with the admin API key (default {ADMIN_KEY_ENV}; unset: admin off)",
        )
        run.add_argument(
            "--api-key-env", metavar="VAR", help="environment variable with the key clients must send"
        )
        run.add_argument(
            "--sticky-header",
            default="X-Session-Id",
            help="header naming a user or session for a sticky split (default X-Session-Id; the "
            "request's `user` field otherwise)",
        )
        run.add_argument(
            "--shadow-queue",
            type=positive_int,
            default=256,
            help="shadow copies waiting at most (default 256)",
        )
        run.add_argument(
            "--shadow-workers",
            type=positive_int,
            default=8,
            help="shadow copies in flight at most (default 8)",
        )
        run.add_argument(
            "--connect-timeout", type=positive_float, default=3.0, help="seconds to connect (default 3)"
        )
        run.add_argument(
            "--timeout",
            type=positive_float,
            default=300.0,
            help="seconds to the first byte and between two pieces of an answer (default 300)",
        )
        run.add_argument(
            "--candidate-timeout", type=positive_float, help="the candidate's --timeout (default: --timeout)"
        )
        run.add_argument(
            "--max-connections", type=positive_int, default=1024, help="per backend (default 1024)"
        )

        for action, help_text, example in (
            ("status", "the routing state and backends of a running gateway", 2),
            ("set", "change a running gateway's mode and/or weight (recorded in its state file)", 1),
        ):
            p = self._action(actions, action, help_text, example + 1)
            p.add_argument("url", metavar="URL", help="the gateway, e.g. http://127.0.0.1:8200")
            p.add_argument(
                "--admin-key-env", default=ADMIN_KEY_ENV, metavar="VAR", help=f"default {ADMIN_KEY_ENV}"
            )
            if action == "set":
                p.add_argument("--mode", choices=MODES)
                p.add_argument("--weight", type=percent)
                p.add_argument("--reason", default="", help="why (recorded with the change)")

    def _action(self, actions, name: str, help: str, example: int) -> argparse.ArgumentParser:
        return actions.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"example:\n  {self.examples[example]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def run(self, args: argparse.Namespace) -> int:
        if args.action == "run":
            return _run(args)
        return _admin(args)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from ernie_ops.errors import UserError
    from ernie_ops.rollout.gateway import Gateway, GatewayConfig
    from ernie_ops.rollout.routing import Routing
    from ernie_ops.validate.client import Endpoint

    if args.log_content and args.no_log:
        raise UserError("--log-content with --no-log: there is no log to put content in")
    if args.judge_suite and args.no_review:
        raise UserError("--judge-suite with --no-review: there is no queue to put flagged answers in")
    judge = None
    if args.judge_suite:
        from ernie_ops.files import regular_file
        from ernie_ops.rollout.judge import LiveJudge

        judge = LiveJudge.load(regular_file(args.judge_suite, "judge suite"), args.judge_min_score)
    import os

    config = GatewayConfig(
        stable=Endpoint.parse(args.stable, args.stable_key_env, args.stable_model),
        candidate=Endpoint.parse(args.candidate, args.candidate_key_env, args.candidate_model)
        if args.candidate
        else None,
        routing=Routing(mode=args.mode, weight=args.weight),
        state_path=args.state,
        log_dir=None if args.no_log else args.log_dir,
        log_max_bytes=int(args.log_max_mb * 2**20),
        retention_days=_retention(args.retention) / 86400,
        log_content=args.log_content,
        mask=args.mask,
        review_dir=None if args.no_review else args.review_dir,
        review_capacity=args.review_queue,
        judge=judge,
        admin_key=os.environ.get(args.admin_key_env) or None,
        api_key=Endpoint.parse("x", args.api_key_env).api_key if args.api_key_env else None,
        sticky_header=args.sticky_header,
        shadow_queue=args.shadow_queue,
        shadow_workers=args.shadow_workers,
        connect_timeout=args.connect_timeout,
        timeout=args.timeout,
        candidate_timeout=args.candidate_timeout,
        max_connections=args.max_connections,
    )

    async def serve() -> None:
        gateway = Gateway(config)
        r = gateway.routing
        if gateway.restored and (r.mode, r.weight) != (args.mode, args.weight):
            print(
                f"continuing from {args.state}: {r.mode} weight {r.weight:g} (revision {r.revision}); "
                "--mode / --weight apply only without a state file",
                flush=True,
            )
        await gateway.start(args.host, args.port)
        import gc

        gc.collect()
        gc.freeze()  # what start-up built is never collected: no full-heap walks behind requests
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        review = ""  # on the start line: scripts read that line alone
        if config.review_dir is not None:
            review = f"; review queue {config.review_dir}"
            review += "" if config.mask else " (personal data NOT masked: --no-mask)"
            review += f", judge: {len(judge)} prompts of {args.judge_suite}" if judge else ""
        names = ", ".join(f"{b.role} {b.base} ({b.model or 'model unknown yet'})" for b in gateway.backends())
        print(
            f"gateway on http://{args.host}:{gateway.port}: {r.mode}"
            + (f" {r.weight:g}%" if r.mode == "split" else "")
            + f"; {names}"
            + ("" if config.admin_key else f"; admin API off ({args.admin_key_env} not set)")
            + review,
            flush=True,
        )
        await stop.wait()
        print("gateway stopping: finishing the requests in flight", flush=True)
        await gateway.stop()

    from ernie_ops import eventloop

    eventloop.run(serve())  # uvloop when installed: a lower p99 on a busy machine
    return 0


def _admin(args: argparse.Namespace) -> int:
    import os

    from ernie_ops.errors import UserError
    from ernie_ops.rollout.controller import GatewayRouter

    key = os.environ.get(args.admin_key_env)
    if not key:
        raise UserError(
            f"the environment variable {args.admin_key_env} is not set",
            hint="export it with the key the gateway was started with",
        )
    change = None
    if args.action == "set":
        if args.mode is None and args.weight is None:
            raise UserError("nothing to change", hint="give --mode and/or --weight")
        change = {"mode": args.mode, "weight": args.weight, "reason": args.reason or "ernie-ops gateway set"}
        change = {k: v for k, v in change.items() if v is not None}
    try:
        answer = GatewayRouter(args.url, key).call("/admin/state", change)
    except ConnectionError as err:
        raise UserError(str(err), hint="check the URL and that `ernie-ops gateway run` is up") from None
    print(json.dumps(answer, indent=2))
    return 0


def _retention(given: float | None) -> float:
    """--retention, else the retention config's gateway_log period (as `gc` reads it), else 30 days."""
    from ernie_ops.privacy.retention import period_for

    if given is not None:
        return given
    return period_for("gateway_log") or 30 * 86400.0
