"""A decode step of a few rows (MAX_ROWS) as one compiled call (`fused_decode.c`, built at install).

A decode step reads every weight once (1.44 GB a token at the 0.3B shape). In numpy
(`DenseForward.forward`) the small operations between the 73 products (norms, RoPE, attention,
SwiGLU, Python) took ~6% of a lone row's step with the memory idle meanwhile, each product cost a
hand-off to OpenBLAS's threads, and 8 rows went through OpenBLAS's small-matrix kernel. Compiled, a
step is its products: a team of threads, spinning between products, takes 64-row tasks of each from
a shared counter (a helper that another process holds off its core leaves its share to the caller,
as `_in_parallel`'s do), 4 weight rows against up to 4 rows of x at a time (`fused_kernels.h`).

Measured in-process, interleaved, at the 0.3B shape (`bench_serve_cpu.py --part decode-step`, 2-core
Xeon with AVX-512, load 1.5-1.8; ms a step, best of 3 rounds; the compiled step here at every count):

| step | 1 row | 2 rows | 4 rows | 8 rows | 12 rows | 16 rows |
|---|---|---|---|---|---|---|
| numpy | 61.8 | 88.8 | 81.0 | 100.3 | 118.2 | 136.7 |
| compiled, AVX-512 | 57.1 | 60.8 | 67.7 | 84.3 | 108.2 | 122.7 |
| compiled, AVX2 | 56.7 | 60.5 | 67.5 | 97.8 | 130.9 | 151.8 |
| compiled, plain | 61.3 | 66.8 | 80.3 | 129.6 | 168.9 | 214.1 |

One row's step then reads the weights at 25.7 GB/s, what two threads doing nothing but reading
reach on that machine (25.6 GB/s), so it is as fast as the memory allows. Past MAX_ROWS numpy's
step is faster, and on a CPU without AVX2 it is faster at any count (MIN_WIDTH). Tried and
not kept: software prefetch in a one-row step (512 B to 32 KB ahead: no faster), 2 or 3 weight rows
against all 8 rows of x at once (0.90x, 0.91x), x interleaved by vector (0.98x), 128- or 256-row
tasks (within 2%); a prompt's attention and SwiGLU compiled (alone 102 against 108 ms and 40
against 57 ms for 18 layers of an 8x64 prefill, but the prefill 0.94x: the helpers spinning beside
MKL's threads, which spin after their products too).

The build is optional (`setup.py`): without a C compiler at install, or with a stale build, steps
run in numpy as before and the engine logs it once (`ernie-ops doctor` says so too). The tests hold
the two paths together.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ABI = 3  # fused_decode.c's ABI: a build from other sources is not used
LIBRARY = "_fused_decode"  # the extension's module name (setup.py), loaded with ctypes
MIN_WIDTH = 256  # without AVX2 numpy's step is faster than the plain kernels (61 against 58 ms a row)
# a decode step of up to this many rows is compiled, by the kernels' vector width (more: numpy's
# batched step); measured: AVX-512 1.19x numpy's step at 8 rows, 1.11x at 16; AVX2 1.03x at 8, 0.90x at 12
MAX_ROWS = {512: 16, 256: 8}


class _Dims(ctypes.Structure):
    _fields_ = [
        *(
            (name, ctypes.c_int32)
            for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "inner", "vocab")
        ),
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
    ]


def _load() -> tuple[ctypes.CDLL | None, str]:
    """The built library, or None and why it cannot be used (no threads started)."""
    here = Path(__file__).parent
    found = [
        here / (LIBRARY + s)
        for s in importlib.machinery.EXTENSION_SUFFIXES
        if (here / (LIBRARY + s)).is_file()
    ]
    if not found:
        return None, "not built (no C compiler at install?)"
    try:
        lib = ctypes.CDLL(str(found[0]))
    except OSError as err:
        return None, f"cannot be loaded ({err})"
    lib.ernie_fused_abi.restype = ctypes.c_int
    if lib.ernie_fused_abi() != ABI:
        return None, f"stale ({found[0].name} is from other sources)"
    return lib, ""


def problem() -> str | None:
    """Why the compiled step cannot be used here, or None (`ernie-ops doctor` reports it)."""
    return _load()[1] or None


def _bind(lib: ctypes.CDLL) -> None:
    """Declare the library's functions' arguments (ctypes converts and checks them so)."""
    lib.ernie_fused_start.argtypes, lib.ernie_fused_start.restype = [ctypes.c_int], ctypes.c_int
    lib.ernie_fused_kernels.argtypes, lib.ernie_fused_kernels.restype = [ctypes.c_int], ctypes.c_int
    lib.ernie_fused_scratch.argtypes = [ctypes.POINTER(_Dims), ctypes.c_int, ctypes.c_int]
    lib.ernie_fused_scratch.restype = ctypes.c_long
    pointer = ctypes.c_void_p
    lib.ernie_fused_step.argtypes = [
        ctypes.POINTER(_Dims),
        *(pointer,) * 5,  # weights, norm, head, inv_freq, embed
        ctypes.c_int,  # rows
        *(pointer,) * 4,  # tokens, positions, keys, values
        ctypes.c_int,  # capacity
        ctypes.c_int,  # at
        pointer,  # bias
        ctypes.c_int,  # bias_stride
        *(pointer,) * 2,  # scratch, logits
    ]
    lib.ernie_fused_step.restype = ctypes.c_int


@dataclass(frozen=True)
class Compiled:
    lib: ctypes.CDLL
    widest: int  # bits a vector of the widest kernels this CPU runs (what a step starts with)


@functools.cache
def compiled() -> Compiled | None:
    """The compiled step, its helper threads started (as many as numpy's BLAS has, less the
    caller); None, logged once, when it cannot be used."""
    from ernie_ops.serve.engine.forward import blas_threads

    lib, why = _load()
    if lib is None:
        log.warning(
            "the compiled decode step is %s: decode steps run in numpy, 3-20%% slower "
            "(reinstall with a C compiler present: pip install -e .)",
            why,
        )
        return None
    _bind(lib)
    lib.ernie_fused_start(blas_threads() - 1)
    built = Compiled(lib, lib.ernie_fused_kernels(0))
    if built.widest < MIN_WIDTH:
        log.info("no AVX2 on this CPU: decode steps run in numpy (faster than the plain kernels)")
    return built


def use_kernels(width: int) -> int:
    """Run the compiled step with WIDTH-bit vectors (512: AVX-512, 256: AVX2, 128: any CPU; 0: the
    widest this CPU runs, the default); the width in use, unchanged when the CPU lacks WIDTH."""
    built = compiled()
    return 0 if built is None else int(built.lib.ernie_fused_kernels(width))


def _address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def _addresses(arrays: Sequence[np.ndarray]) -> ctypes.Array[ctypes.c_void_p]:
    return (ctypes.c_void_p * len(arrays))(*map(_address, arrays))


def _plain(array: np.ndarray) -> bool:
    return array.dtype == np.float32 and array.flags.c_contiguous


class FusedDecode:
    """The compiled step over a `DenseForward`'s weights (the same arrays, not copies)."""

    def __init__(self, lib: ctypes.CDLL, net: Any):
        self._lib = lib
        self._net = net  # keeps the weights the pointers point into alive
        self.dims = _Dims(
            len(net.layers),
            net.embed.shape[1],
            net.heads,
            net.kv_heads,
            net.head_dim,
            net.inner,
            net.head.shape[0],
            float(net.eps),
            float(net.scale),
        )
        self._weights = _addresses(
            [a for w in net.layers for a in (w.ln1, w.ln2, w.qkv.rows, w.o.rows, w.up_gate.rows, w.down.rows)]
        )

    @classmethod
    def of(cls, net: Any) -> FusedDecode | None:
        """The compiled step for NET; None when it is not built or NET has what it does not compute
        (linear or LM-head biases, weights not plain float32 rows)."""
        arrays = [net.norm, net.head, net.embed, net.inv_freq]
        arrays += [a for w in net.layers for a in (w.ln1, w.ln2)]
        linears = [lin for w in net.layers for lin in (w.qkv, w.o, w.up_gate, w.down)]
        if net.head_bias is not None or any(lin.bias is not None for lin in linears) or net.head_dim % 2:
            return None
        if not all(_plain(a) for a in arrays + [lin.rows for lin in linears]):
            return None
        built = compiled()
        if built is None or built.widest < MIN_WIDTH:
            return None
        return cls(built.lib, net)

    def takes(self, cache: list[np.ndarray]) -> bool:
        """Whether a step over CACHE (every row's) is the compiled step's: up to MAX_ROWS rows for the
        kernels in use, laid out as it writes them."""
        width = self._lib.ernie_fused_kernels(-1)
        return len(cache[0]) <= MAX_ROWS.get(width, 0) and all(_plain(c) for c in cache)

    def step(
        self, tokens: np.ndarray, positions: np.ndarray, cache: list[np.ndarray], at: int, bias: np.ndarray
    ) -> np.ndarray:
        """Logits [B, V] of TOKENS [B] at POSITIONS [B], their keys and values written into column AT
        of CACHE (`DenseForward.new_cache(B, ...)`), attending to columns [0, AT] with the additive
        BIAS [B, AT + 1]."""
        net, (rows, _, capacity, _) = self._net, cache[0].shape
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        if tokens.shape != (rows,) or positions.shape != (rows,) or bias.shape != (rows, at + 1):
            raise ValueError(
                f"{rows} rows: tokens {tokens.shape}, positions {positions.shape}, bias {bias.shape}"
            )
        if not 0 <= at < capacity:
            raise ValueError(f"column {at} of a {capacity}-column cache")
        if rows and not 0 <= tokens.min() <= tokens.max() < self.dims.vocab:
            raise IndexError(
                f"a token id of {tokens.tolist()} is outside the vocabulary of {self.dims.vocab}"
            )
        scratch = np.empty(self._lib.ernie_fused_scratch(self.dims, rows, capacity), dtype=np.float32)
        logits = np.empty((rows, self.dims.vocab), dtype=np.float32)
        self._lib.ernie_fused_step(
            self.dims,
            self._weights,
            _address(net.norm),
            _address(net.head),
            _address(net.inv_freq),
            _address(net.embed),
            rows,
            _address(tokens),
            _address(positions),
            _addresses(cache[0::2]),
            _addresses(cache[1::2]),
            capacity,
            at,
            _address(bias),
            at + 1,
            _address(scratch),
            _address(logits),
        )
        return logits
