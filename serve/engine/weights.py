"""Where the numpy forward's weights come from: a checkpoint's safetensors files, or ERNIEKit's loaded
model (the tests' reference). Both give float32 arrays in Paddle's own layout (linear weights
[in, out]) by ERNIEKit's parameter names.

From the files, each tensor is read on its own into a fresh array (plain reads, no memory map:
mapped pages would count in the process's RSS on top of the copies), so loading holds the weights
once plus one tensor in flight: ERNIEKit's `from_pretrained` (float32) followed by copies peaked at
2.8x the weights. A bfloat16 / float16 checkpoint is widened to float32 tensor by tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ernie_ops.errors import UserError
from ernie_ops.train.hf_format import Source, _real_dtype
from ernie_ops.train.verify import HeaderError

TRANSPOSE_ROWS = 8192  # rows read at a time when a table is transposed on the way in (32 MB at 1024 wide)


class Weights(Protocol):
    def has(self, name: str) -> bool: ...

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32, in the checkpoint's layout."""
        ...

    def read_transposed(self, name: str) -> np.ndarray:
        """A C-contiguous float32 copy of the 2-D tensor's transpose."""
        ...


class FileWeights:
    """The tensors of a checkpoint directory's safetensors files (model.safetensors or an index)."""

    def __init__(self, path: Path):
        self.path = path
        self._source = Source(path)  # UserError when a shard is missing, truncated or not safetensors

    def has(self, name: str) -> bool:
        return name in self._source.tensors

    def _tensor(self, name: str) -> Any:
        tensor = self._source.tensors.get(name)
        if tensor is None:
            raise UserError(
                f"{self.path}: the checkpoint has no tensor {name}",
                hint="the CPU engine reads ERNIEKit's parameter names (ernie.layers.N.self_attn.qkv_proj"
                ".weight, ...): serve a checkpoint written by ERNIEKit or `ernie-ops export --format paddle`",
            )
        return tensor

    def read(self, name: str) -> np.ndarray:
        tensor = self._tensor(name)
        try:
            raw = self._source.read(name).view(_real_dtype(tensor.dtype))
        except (OSError, HeaderError) as err:
            raise UserError(
                f"{self.path}: cannot read {name}: {err}", hint="the file is damaged: copy it again"
            ) from None
        self._source._cached = None  # nothing is read twice here: do not keep the last tensor alive
        return raw if raw.dtype == np.float32 else raw.astype(np.float32)

    def read_transposed(self, name: str) -> np.ndarray:
        """Read a block of rows at a time into the transpose, so the untransposed table is never whole
        in memory (the tied LM head: 423 MB at the 0.3B shape)."""
        tensor = self._tensor(name)
        if len(tensor.shape) != 2:
            raise UserError(f"{self.path}: {name} has shape {tensor.shape}, expected a 2-D table")
        rows, cols = tensor.shape
        dtype = _real_dtype(tensor.dtype)
        out = np.empty((cols, rows), dtype=np.float32)
        file = self.path / tensor.shard
        with file.open("rb", buffering=0) as f:
            start = self._source._offsets[name]
            for first in range(0, rows, TRANSPOSE_ROWS):
                block = np.empty((min(TRANSPOSE_ROWS, rows - first), cols), dtype=dtype)
                f.seek(start + first * cols * dtype.itemsize)
                view = memoryview(block.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
                if f.readinto(view) != len(view):
                    raise UserError(f"{file}: {name} ends early", hint="the file is truncated: copy it again")
                out[:, first : first + len(block)] = block.T
        return out


class ModelWeights:
    """The parameters of ERNIEKit's loaded model, shared zero-copy (DLPack) where no copy is needed."""

    def __init__(self, model: Any):
        self._params = dict(model.named_parameters())

    def has(self, name: str) -> bool:
        return name in self._params

    def read(self, name: str) -> np.ndarray:
        return np.from_dlpack(self._params[name].detach())

    def read_transposed(self, name: str) -> np.ndarray:
        return np.ascontiguousarray(self.read(name).T)
