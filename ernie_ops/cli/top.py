"""`ernie-ops top URL...`: live per-backend rates, errors and latencies from /metrics (#19)."""

from __future__ import annotations

import argparse
import json
import time

from ernie_ops.argtypes import positive_float
from ernie_ops.cli.base import Subcommand


class TopCommand(Subcommand):
    name = "top"
    help = "live per-backend request rate, errors, TTFT / E2E p50 and p99, tokens/s from /metrics"
    description = (
        "Scrape each URL's Prometheus /metrics every --interval seconds and show, per backend, what "
        "changed in between: requests/s, error share, TTFT and E2E p50 / p99 (from the histogram "
        "buckets), generated tokens/s, and running / waiting requests. A URL may be an ernie-ops "
        "gateway (one row per backend and traffic), the embedded server, FastDeploy (its metrics "
        "port) or vLLM. A URL that does not answer is shown as down. Ctrl-C ends it. Needs the "
        "`serve` extra (prometheus-client)."
    )
    examples = (
        "ernie-ops top http://127.0.0.1:8200 http://127.0.0.1:8180 http://127.0.0.1:8181",
        "ernie-ops top 127.0.0.1:8200 --interval 5",
        "ernie-ops top 127.0.0.1:8200 --once --json",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "urls", nargs="+", metavar="URL", help="a server: host:port, its base URL or its /metrics URL"
        )
        parser.add_argument(
            "--interval", type=positive_float, default=2.0, help="seconds between two scrapes (default 2)"
        )
        parser.add_argument(
            "--once",
            action="store_true",
            help="print one snapshot (two scrapes --interval apart) and exit: 0 when every URL answered, "
            "1 otherwise",
        )
        parser.add_argument("--json", action="store_true", help="with --once: the rows as JSON")
        parser.add_argument(
            "--timeout", type=positive_float, default=5.0, help="seconds a scrape may take (default 5)"
        )

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.errors import UserError
        from ernie_ops.extras import optional_imports
        from ernie_ops.rollout.top import Top, table

        if args.json and not args.once:
            raise UserError("--json goes with --once", hint="ernie-ops top URL --once --json")
        with optional_imports("serve", "ernie-ops top (reading Prometheus metrics)"):
            import prometheus_client.parser  # noqa: F401
        from rich.console import Console

        top = Top(args.urls, args.timeout)
        import sys

        # a snapshot into a file or a pipe is not cut to 80 columns
        console = Console(width=None if sys.stdout.isatty() else 160)
        if args.once:
            top.poll()
            time.sleep(args.interval)
            rows = top.poll()
            if args.json:
                print(
                    json.dumps({"interval_s": args.interval, "rows": [r.to_json() for r in rows]}, indent=2)
                )
            else:
                console.print(table(rows, f"over {args.interval:g} s"))
            return 0 if all(r.status == "up" for r in rows) else 1
        from rich.live import Live

        top.poll()
        with Live(table([], "first scrape..."), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                stamp = time.strftime("%H:%M:%S")
                live.update(
                    table(top.poll(), f"{stamp}, over {args.interval:g} s (Ctrl-C ends)"), refresh=True
                )
