"""What every `scripts/bench_*.py` shares: its command line, a printed table, a JSON report."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

from ernie_ops.files import write_text_atomic
from ernie_ops.text import format_table

REPO = Path(__file__).resolve().parent.parent


def bench_parser(doc: str | None, name: str, repeat: int = 5) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=repeat, help=f"runs per measurement (default {repeat})")
    parser.add_argument(
        "--out", type=Path, default=REPO / "runs" / "bench" / f"{name}.json", help="JSON report"
    )
    return parser


def print_table(rows: list[list[str]]) -> None:
    """The first column left-aligned, the figures right-aligned."""
    print(format_table(rows, right=set(range(1, len(rows[0])))))


def write_report(path: Path, **report: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "platform": platform.platform()}
    write_text_atomic(path, json.dumps({"machine": machine, **report}, indent=2) + "\n")
    print(f"\nwrote {path}")
