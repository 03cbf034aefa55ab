"""How one request is decoded (`SamplingParams`) and one token drawn from a logits row (`sample`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ernie_ops.errors import UserError


@dataclass
class SamplingParams:
    """How one request is decoded; temperature 0 means greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the prompt or the output
    seed: int | None = None  # the same seed gives the same sample (numpy RNG per request)
    stop: list[str] = field(default_factory=list)  # strings that end generation, not included
    stop_token_ids: list[int] = field(default_factory=list)  # ids that end generation, not included
    ignore_eos: bool = False
    return_logits: bool = False  # keep every step's logits row (tests, debugging)

    def check(self) -> None:
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be >= 1, not {self.max_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, not {self.top_k}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, not {self.repetition_penalty}")
        if any(not s for s in self.stop):
            problems.append("stop strings must not be empty")
        if problems:
            raise UserError("; ".join(problems))


def sample(logits: np.ndarray, params: SamplingParams, seen: Sequence[int], rng: np.random.Generator) -> int:
    """One token id from a logits row."""
    if params.temperature == 0 and (params.repetition_penalty == 1.0 or not len(seen)):
        return int(np.argmax(logits))  # the float64 copy below changes no comparison: skip it
    row = logits.astype(np.float64)
    if params.repetition_penalty != 1.0 and len(seen):
        # CTRL-style: shrink positive logits, grow negative ones, of every token already seen
        ids = np.unique(np.asarray(seen, dtype=np.int64))
        vals = row[ids]
        row[ids] = np.where(vals > 0, vals / params.repetition_penalty, vals * params.repetition_penalty)
    if params.temperature == 0:
        return int(np.argmax(row))
    row = row / params.temperature
    if 0 < params.top_k < row.size:
        kth = np.partition(row, -params.top_k)[-params.top_k]
        row = np.where(row < kth, -np.inf, row)
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # keep the smallest head whose mass reaches top_p (always at least the best token)
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))
