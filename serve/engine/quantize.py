"""Weight-only int8 / int4 quantization of the linear layers, as FastDeploy's `wint8` / `wint4` do it
on a GPU, emulated on the CPU so that a quantization's quality effect can be measured here.

FastDeploy's wint8 / wint4 are online weight-only quantization: at load, each linear weight gets
one scale per output channel (absmax / 127 for int8, absmax / 7 for int4, from Paddle's
`paddle.nn.quant.weight_quantize`), the integers are stored, and the GPU kernel multiplies
activations with the dequantized weight. Here the weight is quantized and dequantized once at load
(`fake_quantize`): the arithmetic, and so the quality, is the GPU's; speed and memory are not (the
CPU engine computes in float32 and keeps float32 weights).
"""

from __future__ import annotations

import numpy as np

# quantization name -> the largest integer of its signed range (Paddle's weight_quantize scales)
LEVELS = {"wint8": 127, "wint4": 7}


def quantize(weight_t: np.ndarray, algo: str) -> tuple[np.ndarray, np.ndarray]:
    """Integers [out, in] (int8, in the signed range of ALGO) and per-output-channel float32 scales
    [out] of a weight in [out, in] layout."""
    levels = LEVELS[algo]
    absmax = np.abs(weight_t).max(axis=1).astype(np.float32)
    scales = absmax / np.float32(levels)
    safe = np.where(scales == 0, np.float32(1), scales)
    ints = np.clip(np.rint(weight_t / safe[:, None]), -levels, levels).astype(np.int8)
    return ints, scales


def fake_quantize(weight_t: np.ndarray, algo: str | None) -> np.ndarray:
    """WEIGHT_T ([out, in], float32) as the GPU computes with it under ALGO: quantized, then
    dequantized. None returns it unchanged."""
    if algo is None:
        return weight_t
    ints, scales = quantize(weight_t, algo)
    return ints.astype(np.float32) * scales[:, None]
