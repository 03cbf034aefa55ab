"""The gateway's routing state: which backend gets a request, and the file that keeps it.

Modes: `shadow` (clients get the stable answer, a copy goes to the candidate in the background),
`split` (the candidate gets `weight` percent of requests), `all-stable`, `all-candidate`.

A split is sticky when the request names a user or session (a header, or the OpenAI `user` field):
the key is hashed into one of 10,000 buckets and the candidate takes the buckets below
`weight * 100`. Raising the weight keeps every key that was on the candidate there (5% -> 25% adds
keys, moves none back), so a user does not flip between models during a ramp-up.

The state is written atomically on every change (`ernie_ops.files.write_text_atomic`) with a
revision number, and read back at start: a restarted gateway continues with the recorded mode and
weight, never silently with the command line's.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ernie_ops.errors import UserError

MODES = ("shadow", "split", "all-stable", "all-candidate")
STABLE = "stable"
CANDIDATE = "candidate"
BUCKETS = 10_000


@dataclass(frozen=True)
class Routing:
    """Where requests go. `weight`: percent of requests to the candidate in split mode (0..100)."""

    mode: str = "all-stable"
    weight: float = 0.0
    revision: int = 0
    updated: float = 0.0  # seconds since the epoch of the last change
    reason: str = ""  # why it changed (the controller's gate, an operator's note)

    def __post_init__(self) -> None:
        check_mode(self.mode)
        check_weight(self.weight)

    def changed(self, mode: str | None = None, weight: float | None = None, reason: str = "") -> Routing:
        """The next revision with MODE and/or WEIGHT changed."""
        return replace(
            self,
            mode=self.mode if mode is None else mode,
            weight=self.weight if weight is None else float(weight),
            revision=self.revision + 1,
            updated=time.time(),
            reason=reason,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "routing state") -> Routing:
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {"mode", "weight", "revision", "updated", "reason"}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        try:
            return cls(
                mode=str(data.get("mode", "all-stable")),
                weight=float(data.get("weight", 0.0)),
                revision=int(data.get("revision", 0)),
                updated=float(data.get("updated", 0.0)),
                reason=str(data.get("reason", "")),
            )
        except (TypeError, ValueError) as err:
            raise UserError(f"{where}: {err}") from None


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"unknown gateway mode {mode!r}", hint=f"one of {', '.join(MODES)}")
    return mode


def check_weight(weight: float) -> float:
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0 <= weight <= 100:
        raise UserError(f"candidate weight {weight!r} is not a percentage", hint="a number from 0 to 100")
    if math.isnan(weight):
        raise UserError("candidate weight is NaN", hint="a number from 0 to 100")
    return float(weight)


def bucket(key: str) -> int:
    """The bucket (0..9999) of a user or session key: the same in every process and release."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def pick(routing: Routing, key: str | None, rng: random.Random | None = None) -> str:
    """The backend that answers the client: STABLE or CANDIDATE (shadow mode answers from stable)."""
    mode = routing.mode
    if mode == "all-candidate":
        return CANDIDATE
    if mode != "split" or routing.weight <= 0:
        return STABLE
    if routing.weight >= 100:
        return CANDIDATE
    if key is not None:
        return CANDIDATE if bucket(key) < routing.weight * (BUCKETS / 100) else STABLE
    draw = (rng or random).random() * 100
    return CANDIDATE if draw < routing.weight else STABLE


class StateFile:
    """The routing state on disk (JSON, replaced atomically on every change)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> Routing | None:
        """The recorded state, or None when there is none yet. A file that cannot be read is an
        error, never a silent reset to the defaults."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(
                f"{self.path}: the gateway state is not JSON ({err})",
                hint="fix or remove the file (removing it starts from the command line's mode)",
            ) from None
        return Routing.from_json(data, str(self.path))

    def save(self, routing: Routing) -> None:
        from ernie_ops.files import write_text_atomic

        write_text_atomic(self.path, json.dumps(routing.to_json(), indent=2) + "\n")
