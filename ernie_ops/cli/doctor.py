from __future__ import annotations

import argparse
import json
import sys

from ernie_ops.cli.base import Subcommand

MARK = {"ok": "ok  ", "info": "info", "warn": "WARN", "fail": "FAIL"}


class Doctor(Subcommand):
    name = "doctor"
    help = "check this node: Python, Paddle and devices, ERNIEKit, PaddleFormers, FastDeploy"
    description = (
        "Check what this node has for training and serving ERNIE 4.5, and say what to do about each "
        "problem. Exits 1 when something required (Paddle, ERNIEKit, PaddleFormers, the data stack) "
        "is missing or broken; warnings do not change the exit status."
    )
    examples = ("ernie-ops doctor", "ernie-ops doctor --json | jq .ok")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.doctor import run_doctor

        def progress(step: str) -> None:
            if not args.json and sys.stderr.isatty():
                print(f"checking {step} ...", end="\r", file=sys.stderr, flush=True)

        report = run_doctor(progress)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            width = max(len(c.name) for c in report.checks)
            for c in report.checks:
                print(f"{MARK[c.status]}  {c.name:{width}}  {c.detail}")
                if c.fix and c.status in ("warn", "fail", "info"):
                    print(f"      {'':{width}}  -> {c.fix}")
            failed = [c.name for c in report.checks if c.status == "fail"]
            print("\n" + ("all required parts present" if not failed else f"problems: {', '.join(failed)}"))
        return 0 if report.ok else 1
