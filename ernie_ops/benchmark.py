"""What every `scripts/bench_*.py` shares: its command line, a printed table, a JSON report."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def bench_parser(doc: str | None, name: str, repeat: int = 5) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=repeat, help=f"runs per measurement (default {repeat})")
    parser.add_argument(
        "--out", type=Path, default=REPO / "runs" / "bench" / f"{name}.json", help="JSON report"
    )
    return parser


def print_table(rows: list[list[str]]) -> None:
    """Left-aligned text columns, first row the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def write_report(path: Path, **report: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "platform": platform.platform()}
    path.write_text(json.dumps({"machine": machine, **report}, indent=2) + "\n")
    print(f"\nwrote {path}")
