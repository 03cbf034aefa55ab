"""The running batch's KV cache layout: one *left-padded* cache, preallocated and written in place.

- Every row's newest token is in the same column, so a decode step writes all rows' keys and values
  into the next free column of per-layer [B, kv_heads, capacity, head_dim] arrays; attention reads
  columns [0, length] with an additive bias (0 for a real token, -inf for padding), so padding gets
  weight 0 and a row's result does not depend on who else is in the batch (up to float summation
  order). Capacity grows by half when full (one copy), not every step.
- A prefill group is left-padded to its longest prompt (`prefill_inputs`): a pad query attends only
  to itself and no real query to a pad key, positions count real tokens only. Its cache is then
  merged with the running one, right-aligned at the longer length (`merge`).
- Each row carries its own position ids, so RoPE sees the positions the request would have alone.
- Rows that leave are dropped and the columns that are padding for every remaining row trimmed
  (`shrink`, one copy), so a long request leaving does not keep the batch wide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ernie_ops.serve.engine.request import Request


@dataclass
class Filling:
    """A long prompt being prefilled a chunk per step, into a cache of its own."""

    request: Request
    cache: list[np.ndarray]
    done: int = 0  # prompt tokens already in the cache


@dataclass
class Batch:
    """The running rows and their shared left-padded KV cache.

    Every row's newest token sits at column `length - 1`, so a decode step writes all rows' new
    keys / values into the same column, in place. `bias[row, col]` is 0 where the row has a real
    token and -inf where it is padding; `positions[row]` is the row's next position id.
    """

    rows: list[Request] = field(default_factory=list)
    cache: list[np.ndarray] = field(default_factory=list)  # [B, kv_heads, capacity, head_dim] each
    bias: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))  # [B, capacity]
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [B]
    length: int = 0  # columns in use

    @property
    def capacity(self) -> int:
        return int(self.bias.shape[1])


def prefill_inputs(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The prompts left-padded to the longest: ids and positions [B, width], the attention bias
    [B, width, width] and which columns hold real tokens [B, width]."""
    width = max(len(p) for p in prompts)
    pads = np.asarray([width - len(p) for p in prompts])
    cols = np.arange(width)
    real = cols[None, :] >= pads[:, None]  # [B, width]
    ids = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, pads[row] :] = prompt
    positions = np.maximum(cols[None, :] - pads[:, None], 0)
    allowed = (cols[None, None, :] <= cols[None, :, None]) & real[:, None, :]
    allowed |= np.eye(width, dtype=bool)[None]
    bias = np.where(allowed, np.float32(0), np.float32(-np.inf))  # [B, width, width]
    return ids, positions, bias, real


def shrink(batch: Batch, keep: list[int]) -> Batch:
    """The batch with rows `keep` only, without the leading columns that are padding for all of them."""
    real = np.isfinite(batch.bias[keep, : batch.length])
    start = int(np.argmax(real.any(axis=0)))
    return relayout(batch, keep, start)


def with_room(length: int) -> int:
    """Cache columns to allocate for `length` used ones: room to decode a while before copying."""
    return length + length // 2 + 32


def relayout(batch: Batch, keep: list[int], start: int) -> Batch:
    """A copy of the batch with rows `keep` and columns from `start` on, with room to grow."""
    used = batch.length - start
    capacity = with_room(used)
    cache = []
    for old in batch.cache:
        new = np.zeros((len(keep), *old.shape[1:2], capacity, *old.shape[3:]), dtype=np.float32)
        new[:, :, :used] = old[keep, :, start : batch.length]
        cache.append(new)
    bias = np.full((len(keep), capacity), -np.inf, dtype=np.float32)
    bias[:, :used] = batch.bias[keep, start : batch.length]
    return Batch([batch.rows[i] for i in keep], cache, bias, batch.positions[keep], used)


def merge(a: Batch, b: Batch) -> Batch:
    """One batch of both: each right-aligned at the longer length (so every row writes the same
    next column), with room to grow."""
    length = max(a.length, b.length)
    capacity = with_room(length)
    rows = len(a.rows) + len(b.rows)
    cache = []
    for x, y in zip(a.cache, b.cache, strict=True):
        new = np.zeros((rows, x.shape[1], capacity, x.shape[3]), dtype=np.float32)
        new[: len(a.rows), :, length - a.length : length] = x[:, :, : a.length]
        new[len(a.rows) :, :, length - b.length : length] = y[:, :, : b.length]
        cache.append(new)
    bias = np.full((rows, capacity), -np.inf, dtype=np.float32)
    bias[: len(a.rows), length - a.length : length] = a.bias[:, : a.length]
    bias[len(a.rows) :, length - b.length : length] = b.bias[:, : b.length]
    return Batch([*a.rows, *b.rows], cache, bias, np.concatenate([a.positions, b.positions]), length)
