"""The parts of scripts/bench_serve_cpu.py, one module a concern; that script is the entry point (its
phases run as child processes of it, `--phase NAME OUT` / `--torch-phase OUT`)."""

from __future__ import annotations

from pathlib import Path

SCRIPT = str(Path(__file__).resolve().parent.parent / "bench_serve_cpu.py")  # what a child process runs
REPO = Path(__file__).resolve().parent.parent.parent
