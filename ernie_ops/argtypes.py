"""argparse types shared by the CLI and the servers' own command lines (library code, so that
nothing outside `ernie_ops.cli` imports the CLI)."""

from __future__ import annotations

import argparse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    """An argparse type: a number > 0 (a zero timeout or concurrency would fail late, or hang)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def unit_interval(text: str) -> float:
    """An argparse type: a score from 0 to 1."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a score from 0 to 1")
    return value


def percent(text: str) -> float:
    """An argparse type: a percentage from 0 to 100."""
    value = _number(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage from 0 to 100")
    return value


def age(text: str) -> float:
    """An argparse type: a duration ('30d', '12h', '2w') in seconds, longer than 0."""
    from ernie_ops.errors import UserError
    from ernie_ops.privacy.retention import parse_age

    try:
        seconds = parse_age(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than 0")
    return seconds


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value
