from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ernie_ops.argtypes import positive_float, positive_int
from ernie_ops.cli.base import Subcommand, add_endpoint_arguments, add_mask_argument, endpoint_from


class Smoke(Subcommand):
    name = "smoke"
    help = "a functional checklist against an OpenAI-compatible endpoint (PASS/FAIL with evidence)"
    description = (
        "Health, models, chat, streaming, stop strings, max_tokens, thinking on/off "
        "(chat_template_kwargs.enable_thinking), JSON output, a tool call, an image (VL models), an "
        "over-long prompt rejected cleanly, concurrent requests and (with a key) a wrong key refused. "
        "Capabilities the served model is not expected to have (from the catalog, or --expect) are "
        "WARN when they fail, not FAIL. Exit 0 when nothing failed, 1 otherwise."
    )
    examples = (
        "ernie-ops smoke http://127.0.0.1:8180",
        "ernie-ops smoke http://gpu-node:8180/v1 --model ERNIE-4.5-21B-A3B-Thinking --api-key-env ERNIE_KEY",
        "ernie-ops smoke 127.0.0.1:8180 --expect json,tools --out runs/smoke-wint4",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_endpoint_arguments(parser)
        parser.add_argument(
            "--expect",
            metavar="LIST",
            help="capabilities that must work: thinking,json,tools,vision or none "
            "(default: what the catalog says of the served model)",
        )
        parser.add_argument(
            "--max-tokens", type=positive_int, default=16, help="tokens per check request (default 16)"
        )
        parser.add_argument(
            "--concurrency", type=positive_int, default=8, help="requests in the concurrent check (default 8)"
        )
        parser.add_argument(
            "--timeout", type=positive_float, default=120.0, help="seconds per request (default 120)"
        )
        parser.add_argument("--json", action="store_true", help="the report as JSON on stdout")
        parser.add_argument(
            "--out", type=Path, metavar="DIR", help="write smoke.json, smoke.md and smoke.html here"
        )
        add_mask_argument(parser)

    def run(self, args: argparse.Namespace) -> int:
        import asyncio

        from ernie_ops.validate.smoke import parse_expect, run_smoke

        expect = parse_expect(args.expect) if args.expect is not None else None
        endpoint = endpoint_from(args)
        stream = sys.stderr if args.json else sys.stdout

        def show(check) -> None:
            print(
                f"{check.status:4}  {check.name:16} {check.seconds:6.2f}s  {check.evidence}",
                file=stream,
                flush=True,
            )

        report = asyncio.run(
            run_smoke(
                endpoint,
                expect,
                args.max_tokens,
                args.concurrency,
                args.timeout,
                on_check=show,
                mask=None if args.mask else False,
            )
        )
        counts = report.counts()
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        expected = ", ".join(report.expected) or "nothing beyond the basics"
        print(f"{report.model} at {report.endpoint}: {summary} (expected: {expected})", file=stream)
        data = report.to_json()
        if args.out:
            from ernie_ops.files import write_text_atomic
            from ernie_ops.validate.report import write_report
            from ernie_ops.validate.smoke import markdown

            args.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(args.out / "smoke.json", json.dumps(data, indent=2) + "\n")
            write_report(args.out, "smoke", "# Smoke test\n\n" + markdown(report), f"smoke {report.model}")
        if args.json:
            print(json.dumps(data, indent=2))
        return 0 if report.passed else 1
