"""The model: a dense ERNIE 4.5 Paddle checkpoint's weights, the forward that serves requests over
them, and ERNIEKit's own model as the tests' reference.

`DenseForward` is dense ERNIE 4.5's float32 arithmetic written out (embedding, RMSNorm, fused QKV
with GQA, interleaved RoPE, softmax attention, SwiGLU MLP, LM head) in numpy, over weights read
straight from the checkpoint's safetensors files (`weights.py`) a tensor at a time, so loading holds
the weights once. Linear weights are kept as [out, in] rows (Paddle stores [in, out]; each is
transposed as it is read), the tied LM head is the embedding table itself.

A decode step of a few rows (one new token each; up to 16 with AVX-512, 8 with AVX2) is one compiled
call when the package was built with a C compiler (`fused_decode.py`: the same arithmetic, 1.08x one
row's step, 1.19x 8 rows'); this module's forward runs prompts, larger batches, and all without it.

Which kernel multiplies (`_matmul`), measured on 2 cores (Xeon, AVX-512; 0.3B shapes, float32):
- one row (a lone stream decoding, memory-bound; without the compiled step): numpy's OpenBLAS gemv
  down the [out, in] rows (dot products over contiguous memory). Over [in, out] (axpy form) it
  measured 0.7x in interleaved engine runs, and MKL's held up worse than OpenBLAS's with other
  processes on the cores. On an AMD
  EPYC (2 threads, the 0.3B model's 73 products of a token, interleaved) it equals scipy's OpenBLAS
  0.3.30 and BLIS (cython-blis, the rows split over 2 threads), and a hand-written AVX-512 C kernel
  (4 rows at a time, 2 OpenMP threads) is 1.03x in slow bandwidth windows (~33 GB/s), 1.08x in fast
  ones (~45 GB/s, where llama.cpp's f32 decode runs too);
- a few rows (a batch decoding, 2 to SMALL_ROWS; those past the compiled step's): OpenBLAS's
  small-matrix kernel, which works on the operands as they lie (no packing of the weight; a plain
  sgemm copies every weight into its panel layout first, so 8 rows cost 2.4x one row; here 1.45x).
  It takes products of at most 100^3 multiply-adds, so the weight goes in blocks of rows
  (`_small_matmul`), runs of blocks as batched numpy matmuls on as many threads as numpy's BLAS has.
  CPU time of the 18 layers' products at 8 rows on one thread: 92 ms against 142 ms for 1024-row
  OpenBLAS products and 178 ms for MKL's (Paddle, transpose_y on [out, in]); one row's gemv 65 ms.
  Past 24 rows MKL is as fast (32 rows: 198 against 217 ms). On an AMD EPYC (Zen 4, 2 threads) an
  8-row step takes ~74 ms and one row ~46: a core does not overlap an 8-row product's arithmetic
  with its memory reads (from memory it runs at about 1 / (1/compute + 1/memory) of the two rates).
  Tried there and not kept: numba kernels reading each weight once into 6x4 register tiles (24 sums)
  reach the core's peak in cache (24 GB/s of weights a core, OpenBLAS's kernel 19) but 13-14 from
  memory against 12.8, 0.97-0.99x the 8-row step on 2 threads (2-3 rows 0.8x; one row, a dot per
  weight row, 0.70x with a busy neighbour, equal on a quiet machine); with software prefetch (LLVM
  IR, 1 to 48 KB ahead) no faster. numba's LLVM also adds ~110 MiB of RSS (load peak 1.28x -> ~1.36x
  the weights);
- a prompt (more rows), on an Intel CPU: Paddle's matmul (MKL) over the same memory (DLPack, no
  copy): 7.0 ms per layer against OpenBLAS's 13 ms at 64 rows (quiet machine, best of 5), close to
  the cores' peak. On other CPUs numpy's OpenBLAS (`_mkl_for_prompts`): Paddle's MKL takes slower
  code on them; on an AMD EPYC (Zen 4, AVX-512, OpenBLAS's Cooperlake kernels) an 8x64-token
  prefill forward took 3.7 s through MKL against 1.6 s through OpenBLAS on 2 threads, 6.8 against
  2.9 s on one (OpenBLAS at about the core's peak); through MKL the prefill was two thirds of an
  8-concurrent run there. There OpenBLAS's sgemm (which packs the weight) is also slower than the
  small-matrix kernel up to ~110 rows: the four products of a layer at 32 / 64 / 96 / 128 rows took
  9.9 / 14.0 / 18.0 / 22.5 ms against 5.5 / 10.2 / 16.1 / 24.1 (2 threads, best of 5), so without
  MKL prompts of up to SMALL_ROWS_OPENBLAS rows take `_small_matmul` too (`_small_rows`).
Outside the products (AMD EPYC, 2 threads: an 8-row decode step ~75 ms of which ~6 are not
products, an 8x64 prefill ~1.7 s of which ~0.2): `_in_parallel`'s helpers are woken by a lock each
(a ThreadPoolExecutor's submit / result cost 5-11 us more a hand-off, ~70 a step); RoPE writes the
queries, scaled by 1 / sqrt(D), in the layout the attention reads them in and the keys straight
into the cache; a decode step's attention (`_attend_one`) copies nothing; a prompt's runs its small
products on one OpenBLAS thread ([512, 128] @ [128, 64]: 88 against 125 us on two); a forward's
layers share their query, attention-output and SwiGLU arrays (an 8x64 prefill and 32 steps peak
at 2042 MiB against 2057; a query array a layer: 2075, time the same). Interleaved,
against the forward before: the 8x64 prefill's attention 142 -> 95 ms (prefill 0.98x), the 8-row
step 0.98x, one row's 1.00x. Tried and not kept: SwiGLU in L2-sized blocks (1.006x the prefill)
or on the helpers too (1.011x: OpenBLAS's threads still spin on the cores after the products) or
in the product's own halves (1.016x: the down-projection then reads every other row), a
step's or a prompt's attention rows split over the threads (1.006x the step; 97 against 95 ms),
scores laid out [keys, queries] so the softmax reduces across rows (no gain).
ERNIEKit's forward itself is not used for serving: it concatenates the cache every step, builds
masks and casts, and runs its LM head over every prompt position. Kept (`Engine(...,
reference=True)`, the tests), ERNIEKit's model is the reference: `reference_logits` runs it, and the
tests hold this forward to it within float tolerance.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ernie_ops.errors import UserError
from ernie_ops.extras import optional_imports
from ernie_ops.serve.engine.fused_decode import FusedDecode
from ernie_ops.serve.engine.quantize import fake_quantize
from ernie_ops.serve.engine.weights import FileWeights, ModelWeights, Weights

log = logging.getLogger(__name__)

# a layer's linear weights, in the order of _Layer's fields
LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.up_gate_proj", "mlp.down_proj")


def load_checkpoint(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    """ERNIEKit's config and tokenizer and the generation config of a dense ERNIE 4.5 Paddle
    checkpoint directory (no weights: `DenseForward.load` reads them)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path} has no config.json", hint="give an ERNIE 4.5 Paddle checkpoint directory")
    raw = json.loads(config_file.read_text(encoding="utf-8"))
    if int(raw.get("moe_num_experts") or 0) > 0:
        raise UserError(
            f"{path} is a MoE model: the embedded CPU engine runs dense ERNIE 4.5 only",
            hint="ERNIEKit's MoE dispatch kernel (moe_gate_dispatch) is GPU-only in Paddle; "
            "serve MoE models with FastDeploy on a GPU",
        )
    threads = blas_threads()
    with optional_imports("cpu", "the embedded CPU server"):
        import paddle
        from ernie.configuration import Ernie4_5_MoeConfig
        from ernie.tokenizer import Ernie4_5_Tokenizer

    paddle.set_device("cpu")
    paddle.base.core.set_num_threads(threads)  # MKL's matmul threads: as many as numpy's BLAS has
    config = Ernie4_5_MoeConfig.from_pretrained(str(path))
    tokenizer = Ernie4_5_Tokenizer.from_pretrained(str(path))
    return config, tokenizer, _generation_config(path)


def blas_threads() -> int:
    """The threads numpy's BLAS runs, asked of its OpenBLAS (the environment cannot tell: Paddle's
    import sets OMP_NUM_THREADS=1 when it is unset, after numpy's BLAS started with every CPU); every
    CPU this process may run on when numpy's BLAS is not an OpenBLAS it can find."""
    openblas = _openblas_threads()
    return openblas[0]() if openblas is not None else len(os.sched_getaffinity(0))


@functools.cache
def _openblas_threads() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """Get and set the threads of numpy's OpenBLAS; None when numpy's BLAS is not an OpenBLAS
    found in this process's maps."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8").splitlines()
    except OSError:
        maps = []
    loaded = {line.split()[-1] for line in maps if "/numpy" in line and "openblas" in line.rsplit("/", 1)[-1]}
    for path in sorted(loaded):
        lib = ctypes.CDLL(path)  # already loaded: the same handle
        for suffix in ("64_", ""):
            if hasattr(lib, "openblas_get_num_threads" + suffix):
                get = getattr(lib, "openblas_get_num_threads" + suffix)
                set_ = getattr(lib, "openblas_set_num_threads" + suffix)
                get.restype, set_.argtypes, set_.restype = ctypes.c_int, [ctypes.c_int], None
                return get, set_
    return None


class _OneBlasThread:
    """numpy's OpenBLAS on the calling thread only, within `with ONE_BLAS_THREAD:`: a prompt's
    attention products ([512, 128] @ [128, 64] a head group) measured 1.4-1.7x faster so than
    split over 2 threads, and they do not wait for a core that another process holds. The setting
    is the process's: the first to enter saves the thread count and the last to leave restores it
    (two engines in a process may overlap; each restoring what it saw would leave 1 for good)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._saved = 0

    def __enter__(self) -> None:
        openblas = _openblas_threads()
        if openblas is None:
            return
        with self._lock:
            if self._inside == 0:
                self._saved = openblas[0]()
                openblas[1](1)
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        openblas = _openblas_threads()
        if openblas is None:
            return
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                openblas[1](self._saved)


ONE_BLAS_THREAD = _OneBlasThread()


def load_reference(path: Path) -> Any:
    """ERNIEKit's own model of the checkpoint (float32, on the CPU, in eval mode)."""
    with optional_imports("cpu", "the embedded CPU server"):
        from ernie.modeling_moe import Ernie4_5_MoeForCausalLM

    started = time.perf_counter()
    # moe_group "dummy": no process group is needed; fp32: no bf16 CPU kernels
    model = Ernie4_5_MoeForCausalLM.from_pretrained(str(path), moe_group="dummy", dtype="float32")
    model.eval()
    log.info("loaded ERNIEKit's model of %s in %.1f s", path, time.perf_counter() - started)
    return model


def _generation_config(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's generation_config.json ({} when there is none)."""
    path = model_dir / "generation_config.json"
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}", hint="fix or remove the file") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object", hint="fix or remove the file")
    return config


def reference_logits(model: Any, token_ids: Sequence[int]) -> np.ndarray:
    """Logits [n, V] of one sequence in one uncached forward of ERNIEKit's own model."""
    import paddle

    n = len(token_ids)
    with paddle.no_grad():
        out = model(
            input_ids=paddle.to_tensor([list(token_ids)], dtype="int64"),
            position_ids=paddle.to_tensor(np.arange(n)[None], dtype="int64"),
            attention_mask=paddle.to_tensor(np.tril(np.ones((n, n), dtype=bool))[None, None]),
            return_dict=True,
        )
    return np.asarray(out.logits.numpy()[0])


def _tensor(array: np.ndarray) -> Any:
    """A Paddle tensor over ARRAY's memory (DLPack; read-only arrays cannot be shared: copied)."""
    from paddle.utils.dlpack import from_dlpack

    array = np.ascontiguousarray(array)
    return from_dlpack(array if array.flags.writeable else array.copy())  # type: ignore[arg-type]


SCORES = 1 << 16  # attention scores (float32) computed at once: 256 KB, within the L2 cache
QUERIES = 256  # a long prompt's queries attend this many at a time (`_attend`)
SMALL_ROWS = 24  # up to this many rows, `_small_matmul` (one row: gemv; more: a prompt's; see `_matmul`)
SMALL_ROWS_OPENBLAS = 96  # ... where prompts go through OpenBLAS, not MKL (`_small_rows`)
SMALL_PRODUCT = 100**3  # OpenBLAS's small-matrix kernel takes M x N x K up to this
SMALL_OUTPUT = 1200  # ... and, with the weight transposed (our case), M x N up to this
PARTS = 4  # runs of blocks per thread in `_small_matmul`
CPUINFO = Path("/proc/cpuinfo")  # the CPU's vendor picks the prompts' matmul (`_mkl_for_prompts`)


def _matmul(x: np.ndarray, rows: np.ndarray, tensor: Any) -> np.ndarray:
    """x [M, in] @ rows.T -> [M, out]; ROWS is the weight as [out, in] (C-contiguous), TENSOR the
    same memory as a Paddle tensor. One row: numpy's gemv (dot products down contiguous rows, the
    memory-bound case); a few rows: `_small_matmul`; a prompt: Paddle's matmul (MKL) on Intel
    CPUs, numpy's OpenBLAS on others (`_mkl_for_prompts`)."""
    import paddle

    if len(x) == 1:
        return (rows @ x[0])[None]
    if len(x) <= _small_rows():
        return _small_matmul(np.ascontiguousarray(x), rows)
    if not _mkl_for_prompts():
        return x @ rows.T
    return np.from_dlpack(paddle.matmul(_tensor(x), tensor, transpose_y=True))


@functools.cache
def _small_rows() -> int:
    """Up to how many rows `_small_matmul` multiplies: SMALL_ROWS beside MKL's prompts, more beside
    OpenBLAS's sgemm, which packs every weight first (the module docstring has the figures)."""
    return SMALL_ROWS if _mkl_for_prompts() else SMALL_ROWS_OPENBLAS


@functools.cache
def _mkl_for_prompts() -> bool:
    """Whether prompts' products go through Paddle's matmul (MKL): on Intel CPUs, where it is the
    fastest; elsewhere numpy's OpenBLAS is (the module docstring has the figures). MKL when the
    vendor cannot be read, as before this choice existed."""
    vendor = _cpu_vendor()
    return vendor is None or vendor == "GenuineIntel"


def _cpu_vendor() -> str | None:
    """The CPU's vendor_id ("GenuineIntel", "AuthenticAMD", ...) from /proc/cpuinfo; None where
    there is none (not Linux, not x86)."""
    try:
        with CPUINFO.open(encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    return value.strip()
    except OSError:
        pass
    return None


@functools.cache
def _row_block(m: int, out: int, inner: int) -> int:
    """Weight rows per product of M rows of x so that it stays in OpenBLAS's small-matrix kernel,
    a divisor of OUT when one is close to the limit (then the blocks cover the weight exactly)."""
    limit = max(1, min(SMALL_PRODUCT // (m * inner), SMALL_OUTPUT // m, out))
    divisor = next(b for b in range(limit, 0, -1) if out % b == 0)
    return divisor if 2 * divisor > limit else limit


@functools.cache
def _helpers() -> tuple[int, _Crew | None]:
    """The threads `_small_matmul` runs, as many as numpy's BLAS: the caller and a crew of the rest."""
    threads = blas_threads()
    return threads, _Crew(threads - 1) if threads > 1 else None


class _Crew:
    """Helper threads that stay up between jobs, each woken by releasing a lock it waits on: a
    job handed over costs ~5 us less than a ThreadPoolExecutor's submit / result (about 11 us less
    with 8-row products running), and a decode step hands over ~70 jobs."""

    def __init__(self, helpers: int):
        self._wake = [threading.Lock() for _ in range(helpers)]
        self._done = [threading.Lock() for _ in range(helpers)]
        self._job: Callable[[], None] = lambda: None
        self._errors: list[BaseException] = []
        self._busy = threading.Lock()  # one job at a time (two engines in a process share the crew)
        for wake, done in zip(self._wake, self._done, strict=True):
            wake.acquire()
            done.acquire()
            threading.Thread(target=self._serve, args=(wake, done), name="ernie-matmul", daemon=True).start()

    def _serve(self, wake: threading.Lock, done: threading.Lock) -> None:
        while True:
            wake.acquire()
            try:
                self._job()
            except BaseException as err:  # raised again on the caller's thread
                self._errors.append(err)
            done.release()

    def run(self, helpers: int, work: Callable[[], None]) -> None:
        """work() on this thread and on HELPERS of the crew's threads; back when all have returned
        (a helper that has not woken up by then is not waited for: it is not woken at all). While
        another thread's job has the crew, work() on this thread alone."""
        if not self._busy.acquire(blocking=False):
            work()
            return
        try:
            self._run(helpers, work)
        finally:
            self._busy.release()

    def _run(self, helpers: int, work: Callable[[], None]) -> None:
        self._job, self._errors = work, []
        woken = self._wake[:helpers]
        for wake in woken:
            wake.release()
        try:
            work()
        finally:  # even when work() raised: no helper may still run this job when the next starts
            for wake, done in zip(woken, self._done[:helpers], strict=True):
                if not wake.acquire(blocking=False):  # the helper took its signal: wait for it
                    done.acquire()
        if self._errors:
            raise self._errors[0]


def _in_parallel(tasks: int, run: Callable[[int], None]) -> None:
    """run(0) .. run(tasks - 1) on the caller's and the helper threads (`_helpers`), each taking the
    next task from a shared counter: a thread that another process holds off its core leaves its
    remaining tasks to the others instead of holding up the step. RUN must release the GIL for
    most of its time (numpy's products and ufuncs over large arrays do)."""
    threads, crew = _helpers()
    taken = itertools.count()  # next() on it is atomic: each task is taken once

    def work() -> None:
        while (i := next(taken)) < tasks:
            run(i)

    if crew is None or tasks < 2:
        work()
    else:
        crew.run(min(threads, tasks) - 1, work)


def _small_matmul(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x [M, in] @ rows.T for a few rows of x: the weight in blocks of `_row_block` rows, a run of
    blocks as one batched matmul ([blocks, M, in] @ [blocks, in, block], written straight into the
    result's columns); PARTS runs per thread (`_in_parallel`)."""
    m, (out, inner) = len(x), rows.shape
    block = _row_block(m, out, inner)
    blocks = out // block
    result = np.empty((m, out), dtype=np.float32)
    weights = rows[: blocks * block].reshape(blocks, block, inner).transpose(0, 2, 1)
    into = result[:, : blocks * block].reshape(m, blocks, block).transpose(1, 0, 2)
    runs = min(blocks, PARTS * _helpers()[0])
    bounds = [blocks * i // runs for i in range(runs + 1)]

    def run(i: int) -> None:
        lo, hi = bounds[i], bounds[i + 1]
        np.matmul(x, weights[lo:hi], out=into[lo:hi])

    _in_parallel(runs, run)
    if blocks * block < out:  # the rows past the last whole block
        np.matmul(x, rows[blocks * block :].T, out=result[:, blocks * block :])
    return result


class DenseForward:
    """A lean forward of dense ERNIE 4.5 (see the module docstring), built from a config and a
    source of weights by ERNIEKit's parameter names."""

    def __init__(self, config: Any, weights: Weights, quantization: str | None = None):
        problems = [
            name
            for name, bad in (
                ("MoE layers", bool(getattr(config, "use_moe", False))),
                ("LayerNorm instead of RMSNorm", not getattr(config, "use_rmsnorm", True)),
                ("3-D RoPE", bool(getattr(config, "rope_3d", False))),
            )
            if bad
        ]
        if problems:
            raise UserError(f"the CPU engine cannot run this model: {', '.join(problems)}")
        self.config = config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = np.float32(config.rms_norm_eps)
        self.inner = int(config.intermediate_size)
        self.scale = np.float32(1.0 / self.head_dim**0.5)  # scale_qk_coeff cancels out in ERNIEKit
        ratio = float(getattr(config, "compression_ratio", 1.0) or 1.0)
        dims = np.arange(0, self.head_dim, 2, dtype=np.float32) / self.head_dim
        self.inv_freq = (1.0 / float(config.rope_theta) ** dims / ratio).astype(np.float32)

        self.layers = []
        for i in range(int(config.num_hidden_layers)):
            prefix = f"ernie.layers.{i}."
            self.layers.append(
                _Layer(
                    weights.read(prefix + "input_layernorm.weight"),
                    weights.read(prefix + "post_attention_layernorm.weight"),
                    *(_Linear.of(weights, prefix + name, quantization) for name in LINEARS),
                )
            )
        self.norm = weights.read("ernie.norm.weight")
        self.tied = bool(config.tie_word_embeddings)
        self.embed = weights.read("ernie.embed_tokens.weight")  # [V, hidden]
        # the LM head as [V, hidden] rows: tied, the embedding table itself; untied, Paddle's
        # [hidden, V] lm_head transposed
        self.head = self.embed if self.tied else weights.read_transposed("lm_head.weight")
        self.head_tensor = _tensor(self.head)
        self.head_bias = weights.read("lm_head.bias") if weights.has("lm_head.bias") else None
        self.fused = FusedDecode.of(self)  # decode steps of a few rows, compiled (None: numpy)

    @classmethod
    def load(cls, path: Path, config: Any, quantization: str | None = None) -> DenseForward:
        """The forward of a checkpoint directory, its weights read from its safetensors files."""
        started = time.perf_counter()
        net = cls(config, FileWeights(path), quantization)
        log.info("read the weights of %s in %.1f s", path, time.perf_counter() - started)
        return net

    @classmethod
    def of_model(cls, model: Any, quantization: str | None = None) -> DenseForward:
        """The forward over the weights of ERNIEKit's loaded model."""
        return cls(model.config, ModelWeights(model), quantization)

    def new_cache(self, batch: int, capacity: int) -> list[np.ndarray]:
        """Keys and values of every layer: [2 * layers] arrays of [batch, kv_heads, capacity, head_dim]."""
        shape = (batch, self.kv_heads, capacity, self.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * len(self.layers))]

    def _norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        variance = np.einsum("...i,...i->...", x, x)[..., None] / np.float32(x.shape[-1])
        out = x / np.sqrt(variance + self.eps)
        out *= weight
        return out

    @staticmethod
    def _rope(qkv: np.ndarray, turns: np.ndarray, out: np.ndarray) -> None:
        """ERNIE's RoPE rotates interleaved pairs (x[2i], x[2i+1]) by angle i: as complex numbers
        x[2i] + i x[2i+1], a product with TURNS (e^(i angle), [B, S, 1, D/2]); of qkv [B, S, n, D]
        (some of its heads) into OUT (the pairs, [B, S, n, D/2], any strides)."""
        np.multiply(qkv.view(np.complex64), turns, out=out)  # the last axis is contiguous: a view

    def forward(
        self, ids: np.ndarray, positions: np.ndarray, bias: np.ndarray, cache: list[np.ndarray], at: int
    ) -> np.ndarray:
        """Logits [B, V] of the last fed position of every row.

        ids / positions: [B, S]; the S new keys and values are written into `cache` at columns
        [at, at + S) and every query attends to columns [0, at + S) with the additive `bias`
        [B, S, at + S] (0 or -inf).
        """
        rows, steps = ids.shape
        if steps == 1 and self.fused is not None and self.fused.takes(cache):
            return self.fused.step(ids[:, 0], positions[:, 0], cache, at, bias[:, 0])
        heads, kv, dim = self.heads, self.kv_heads, self.head_dim
        end = at + steps
        angles = positions[..., None].astype(np.float32) * self.inv_freq
        turns = np.empty((rows, steps, 1, dim // 2), dtype=np.complex64)
        turns.real[:, :, 0], turns.imag[:, :, 0] = np.cos(angles), np.sin(angles)
        scaled = turns * self.scale  # the queries' turns carry the attention's 1 / sqrt(D)
        attend = self._attend_one if steps == 1 else self._attend
        # every layer's queries, attention output and SwiGLU in the same arrays: fewer, steadier
        # allocations (the heap keeps less after a prefill); the attention output, used up by the
        # o-projection, and SwiGLU share one
        q = np.empty((rows, kv, heads // kv, steps, dim // 2), dtype=np.complex64)
        scratch = np.empty(rows * steps * max(heads * dim, self.inner), dtype=np.float32)
        attended = scratch[: rows * steps * heads * dim].reshape(rows, steps, heads * dim)
        act = scratch[: rows * steps * self.inner].reshape(rows, steps, self.inner)
        x = self.embed[ids]  # [B, S, hidden]
        for i, w in enumerate(self.layers):
            qkv = w.qkv(self._norm(x, w.ln1))
            qkv = qkv.reshape(rows, steps, heads + 2 * kv, dim)
            keys, values = cache[2 * i], cache[2 * i + 1]
            # rotated straight into the layouts they are read in: the queries [B, kv, group, S, D]
            # (a head group's queries are the rows of one product), the keys the cache's columns
            queries = qkv[:, :, :heads].reshape(rows, steps, kv, heads // kv, dim)
            self._rope(queries, scaled[:, :, None], out=q.transpose(0, 3, 1, 2, 4))
            new_keys = keys.view(np.complex64)[:, :, at:end].transpose(0, 2, 1, 3)
            self._rope(qkv[:, :, heads : heads + kv], turns, out=new_keys)
            values[:, :, at:end] = qkv[:, :, heads + kv :].transpose(0, 2, 1, 3)
            attend(q.view(np.float32), keys[:, :, :end], values[:, :, :end], bias, attended)
            x += w.o(attended)  # x is this forward's own array (the embedding lookup copies)
            self._swiglu(w.up_gate(self._norm(x, w.ln2)), act)
            x += w.down(act)
        return self._logits(self._norm(x[:, -1], self.norm))

    def _swiglu(self, gate_up: np.ndarray, out: np.ndarray) -> None:
        """silu(gate) * up = gate / (1 + e^-gate) * up of gate_up [..., 2 * inner] (the gate half,
        then the up half) into OUT [..., inner]."""
        gate, up = gate_up[..., : self.inner], gate_up[..., self.inner :]
        np.negative(gate, out=out)
        np.exp(out, out=out)
        out += 1
        np.divide(gate, out, out=out)
        out *= up

    def _logits(self, x: np.ndarray) -> np.ndarray:
        """x [B, hidden] @ the LM head -> [B, V]."""
        out = _matmul(x, self.head, self.head_tensor)
        return out if self.head_bias is None else out + self.head_bias

    def _attend(
        self, q: np.ndarray, keys: np.ndarray, values: np.ndarray, bias: np.ndarray, out: np.ndarray
    ) -> None:
        """Softmax attention with GQA: q [B, kv, group, S, D] (scaled by 1 / sqrt(D)), keys /
        values [B, kv, L, D] -> OUT [B, S, heads * D].

        The query heads sharing a KV head are the rows of one matmul (no repeated keys; q is laid
        out so that they are without a copy). Prompts go in blocks of rows whose scores stay within
        SCORES (in the L2 cache: all 8 rows of an 8x64 prefill at once measured 1.3x the time of a
        row at a time), a long prompt also QUERIES queries at a time.
        """
        rows, kv, group, steps, dim = q.shape
        # on this thread only: a prompt's blocks on the helpers too measured slower (8x64: MKL's
        # threads still spin on the cores after the products around it; with OpenBLAS's on an AMD
        # EPYC, 1.77 against 1.59 s for the whole prefill)
        with ONE_BLAS_THREAD:
            self._attend_blocks(q, keys, values, bias, out.reshape(rows, steps, kv, group, dim))

    def _attend_blocks(
        self, q: np.ndarray, keys: np.ndarray, values: np.ndarray, bias: np.ndarray, out: np.ndarray
    ) -> None:
        """`_attend` into OUT [B, S, kv, group, D], in blocks of rows (and of QUERIES queries)."""
        rows, kv, group, steps, dim = q.shape
        block = max(1, SCORES // (kv * group * min(steps, QUERIES) * keys.shape[2]))
        for r in range(0, rows, block):
            k, v = keys[r : r + block], values[r : r + block]
            for s in range(0, steps, QUERIES):
                qs = q[r : r + block, :, :, s : s + QUERIES]
                n, width = qs.shape[3], k.shape[2]
                scores = qs.reshape(-1, kv, group * n, dim) @ k.swapaxes(-1, -2)
                scores = scores.reshape(-1, kv, group, n, width)
                scores += bias[r : r + block, None, None, s : s + n]
                scores -= scores.max(axis=-1, keepdims=True)  # every row has a valid column: finite
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True)
                mixed = scores.reshape(-1, kv, group * n, width) @ v
                out[r : r + block, s : s + n] = mixed.reshape(-1, kv, group, n, dim).transpose(0, 3, 1, 2, 4)

    def _attend_one(
        self, q: np.ndarray, keys: np.ndarray, values: np.ndarray, bias: np.ndarray, out: np.ndarray
    ) -> None:
        """`_attend` for a decode step (S == 1): q [B, kv, group, 1, D] -> OUT [B, 1, heads * D].
        Every row at once and no copies: with one query OUT's heads lie as q's, [kv, group]."""
        rows, kv, group, _, dim = q.shape
        scores = q.reshape(rows, kv, group, dim) @ keys.swapaxes(-1, -2)  # [B, kv, group, L]
        scores += bias[:, None]  # [B, 1, 1, L]
        scores -= scores.max(axis=-1, keepdims=True)  # every row has a valid column: finite
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        np.matmul(scores, values, out=out.reshape(rows, kv, group, dim))


class _Linear:
    """y = x @ W + b with W kept as [out, in] rows (Paddle stores [in, out]; see `_matmul`)."""

    __slots__ = ("bias", "rows", "tensor")

    def __init__(self, rows: np.ndarray, bias: np.ndarray | None):
        self.rows = rows
        self.tensor = _tensor(rows)  # shares the array's memory
        self.bias = bias

    @classmethod
    def of(cls, weights: Weights, name: str, quantization: str | None = None) -> _Linear:
        """The layer NAME, quantized and dequantized as FastDeploy's weight-only QUANTIZATION
        computes with it (None: as it is)."""
        rows = fake_quantize(weights.read_transposed(name + ".weight"), quantization)  # [out, in]
        bias = weights.read(name + ".bias") if weights.has(name + ".bias") else None
        return cls(np.ascontiguousarray(rows), None if bias is None else np.array(bias))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = _matmul(x.reshape(-1, x.shape[-1]), self.rows, self.tensor)  # one 2-D product over all rows
        y = y.reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


@dataclass(frozen=True)
class _Layer:
    ln1: np.ndarray  # RMSNorm weights before attention / before the MLP
    ln2: np.ndarray
    qkv: _Linear
    o: _Linear
    up_gate: _Linear  # [hidden, 2 * inner]: the gate half, then the up half
    down: _Linear
