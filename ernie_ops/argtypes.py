"""argparse types shared by the CLI and the servers' own command lines (library code, so that
nothing outside `ernie_ops.cli` imports the CLI)."""

from __future__ import annotations

import argparse


def positive_float(text: str) -> float:
    """An argparse type: a number > 0 (a zero timeout or concurrency would fail late, or hang)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value
