"""What every `scripts/bench_*.py` shares: its command line, a printed table, a JSON report."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from pathlib import Path
from types import ModuleType
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


def script(name: str) -> ModuleType:
    """scripts/NAME.py as a module: one benchmark reusing another's fixtures (the 0.3B-shaped checkpoint
    of bench_serve_cpu) instead of a copy of them."""
    scripts = str(REPO / "scripts")
    if scripts not in sys.path:  # as when the script runs: its directory leads sys.path (scripts/servebench)
        sys.path.insert(0, scripts)
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def memory_bytes(field: str) -> int:
    """This process's VmRSS or VmHWM (the peak of this process image: getrusage's ru_maxrss can carry
    over the parent's across fork and exec) in bytes; 0 where /proc has no such line."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0
