"""Weight-only int8 / int4 quantization of the linear layers, as FastDeploy's `wint8` / `wint4` do it
on a GPU, emulated on the CPU so that a quantization's quality effect can be measured here.

What FastDeploy does (PaddlePaddle/FastDeploy, develop):
- `fastdeploy/model_executor/layers/quantization/weight_only.py`: `wint8` / `wint4` are
  `WeightOnlyConfig(algo="weight_only_int8" | "weight_only_int4")`; `GPUWeightOnlyLinearMethod`
  calls `paddle.nn.quant.weight_quantize(weight, algo, arch)` on the loaded weight ([in, out], the
  model dtype, bfloat16 for ERNIE 4.5), group size left at -1 (one scale per output channel), arch
  from `FLAGS_weight_only_linear_arch` or else the device's (the prebuilt wheels: SM80 / 86 / 89 / 90).
  The scale is stored in the model dtype; `apply` runs `weight_only_linear(x, weight, scale, ...)`.
- `fastdeploy/model_executor/layers/linear.py`: every `LinearBase` without `skip_quant` gets the
  quant method; `fastdeploy/model_executor/models/ernie4_5_moe.py` (the dense 0.3B too) builds
  qkv_proj, o_proj, up_gate_proj and down_proj as such layers. The embedding
  (`VocabParallelEmbedding`) and the LM head (`layers/lm_head.py`: a plain fleet ColumnParallelLinear,
  float32 with `lm_head_fp32`) are not quantized. So here: the same four layers, nothing else.

What Paddle's kernel computes (PaddlePaddle/Paddle, also in the wheel's headers;
`paddle/phi/kernels/gpu/weight_quantize_kernel.cu` -> `impl/weight_quantize_kernel_gpu_impl.h`,
`per_channel_quant_gpu` for int8 and `per_channel_quant_gpu_int4_col_pack` for int4 at arch >= 75):
- absmax per output channel in float32 over the bfloat16 weights;
- scale = T(absmax / 127) (int8) or T(absmax / 7) (int4), T the model dtype (round to nearest even);
- q = lroundf((w / absmax) * L) in float32, clipped to [-L, L]: the quotient is taken against the
  float32 absmax, not the rounded scale, and `lroundf` rounds halves AWAY from zero (not np.rint).
Paddle's CPU kernel (`paddle/phi/kernels/cpu/weight_quantize_kernel.cc` -> `impl/
weight_quantize_kernel_impl.h`, `per_channel_quant`) differs: q = round(w / float(scale_T)), i.e. it
divides by the rounded scale; with bfloat16 scales (8-bit mantissa) that moves values up to 127 * 2^-9
= 0.25 of a step, so some integers differ by one from the GPU's (Gaussian weights, bfloat16: 2.3%
for int8, 0.3% for int4). `kernel="cpu"` reproduces it bit for bit (the tests hold it to Paddle's own
CPU `weight_quantize`); the engine uses `kernel="gpu"`, what FastDeploy runs.

How the GPU computes with them (`weight_only_linear`, `paddle/phi/kernels/gpu/
weight_only_linear_kernel.cu`): more than 3 rows go through the cutlass fpA_intB GEMM, whose
dequantizer (`fusion/cutlass/cutlass_extensions/gemm/warp/mma_tensorop_dequantizer.h`, the bfloat16
Ampere specialization) multiplies the integer, converted exactly, by the scale with `__hmul2`; up to
3 rows (decode at small batch) go through the GEMV of `funcs/weight_only_gemv.cu`, whose
`WeightPostProcessor` does the same product in T (int8: `w * scale`, int4: an fma with a zero
offset). Either way the weight multiplied with the activations is T(q * scale): `dequantize`. An
all-zero channel has scale 0: the GPU's integers there come from 0/0 (127 for int8), here 0; either
way the weight is 0.

What is not the GPU's: the CPU engine keeps the activations, the embedding, the norms and the LM head
in float32 (the GPU: bfloat16), so the drift measured against float32 is the weights' alone; and it
keeps the dequantized weights in float32, so memory and speed are the CPU's, not a GPU's int8 / int4.
"""

from __future__ import annotations

import numpy as np

from ernie_ops.errors import UserError

# quantization name -> the largest integer of its signed range (the kernel's bound)
LEVELS = {"wint8": 127, "wint4": 7}
# quantization name -> Paddle's `weight_quantize` algo
ALGOS = {"wint8": "weight_only_int8", "wint4": "weight_only_int4"}
DTYPES = ("bfloat16", "float16")  # the model dtypes FastDeploy quantizes from (the scale's too)
KERNELS = ("gpu", "cpu")


def to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """X (float32) rounded to the nearest DTYPE value, ties to even, as float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if dtype != "bfloat16":
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    bits = x.view(np.uint32)
    # round to nearest even on the upper 16 bits (numpy has no bfloat16; no NaN in weights)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's round / lroundf: halves away from zero. In float64, where |x| + 0.5 is exact for any
    float32 x (in float32, 0.49999997 + 0.5 rounds up to 1)."""
    x64 = x.astype(np.float64)
    return np.copysign(np.floor(np.abs(x64) + 0.5), x64)


def quantize(
    weight_t: np.ndarray, algo: str, dtype: str = "bfloat16", kernel: str = "gpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Integers [out, in] (int8, in the signed range of ALGO) and per-output-channel scales [out]
    (float32 holding DTYPE values) of a weight in [out, in] layout, as Paddle's `weight_quantize`
    makes them from the weight in DTYPE: its GPU kernel (what FastDeploy runs) or its CPU one."""
    if algo not in LEVELS:
        raise UserError(
            f"quantization {algo!r} is not one the embedded CPU engine emulates ({', '.join(LEVELS)})",
            hint="wint2 and the fp8 / w4a8 schemes need FastDeploy on a GPU",
        )
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}")
    levels = np.float32(LEVELS[algo])
    w = to_dtype(weight_t, dtype)
    absmax = np.abs(w).max(axis=1)
    scales = to_dtype(absmax / levels, dtype)
    divisor = absmax if kernel == "gpu" else scales
    safe = np.where(divisor == 0, np.float32(1), divisor)[:, None]
    scaled = (w / safe) * levels if kernel == "gpu" else w / safe  # float32, in the kernels' order
    ints = np.clip(round_half_away(scaled), -levels, levels).astype(np.int8)
    return ints, scales


def dequantize(ints: np.ndarray, scales: np.ndarray, dtype: str = "bfloat16") -> np.ndarray:
    """The weight [out, in] the GPU's tensor cores multiply with: DTYPE(q * scale), float32."""
    return to_dtype(ints.astype(np.float32) * scales[:, None], dtype)


ROWS_AT_ONCE = 512  # output channels quantized together: bounds the float64 temporaries (~4 MB / 1k in)


def fake_quantize(weight_t: np.ndarray, algo: str | None) -> np.ndarray:
    """WEIGHT_T ([out, in], float32) as FastDeploy's GPU computes with it under ALGO (bfloat16 model):
    quantized, then dequantized. None returns it unchanged. Channels are independent: done a block
    of rows at a time, so the temporaries stay small next to the weight."""
    if algo is None:
        return weight_t
    out = np.empty(weight_t.shape, dtype=np.float32)
    for start in range(0, weight_t.shape[0], ROWS_AT_ONCE):
        rows = slice(start, start + ROWS_AT_ONCE)
        out[rows] = dequantize(*quantize(weight_t[rows], algo))
    return out
