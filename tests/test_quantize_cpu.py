"""The embedded engine's wint8 / wint4 (serve/engine/quantize.py) held to Paddle's own
`paddle.nn.quant.weight_quantize`, which runs on the CPU build for float16 / bfloat16 input with
`arch` set. Its output is in the GPU GEMM's layout (arch 80: rows permuted, transposed, interleaved,
biased, int4 two to a byte); the layout is a fixed permutation of the integers for a shape, learned
here from Paddle itself with probe weights whose integers spell out their own positions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from polling import free_port

from ernie_ops.errors import UserError
from ernie_ops.serve.engine.quantize import (
    ALGOS,
    LEVELS,
    ROWS_AT_ONCE,
    dequantize,
    fake_quantize,
    quantize,
    round_half_away,
    to_dtype,
)

IN, OUT = 128, 64  # Paddle's [in, out]; the engine's weights are [out, in]


@pytest.fixture(scope="module")
def paddle():
    return pytest.importorskip("paddle")


def _paddle_raw(paddle, w_in_out: np.ndarray, name: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Paddle's weight_quantize of W ([in, out], float32 holding DTYPE values): the raw int8 bytes and
    the scales as float32."""
    from paddle.nn.quant import weight_quantize

    x = paddle.to_tensor(w_in_out).astype(dtype)
    q, s = weight_quantize(x, algo=ALGOS[name], arch=80)
    return q.numpy(), s.astype("float32").numpy()


def _slots(raw: np.ndarray, name: str) -> np.ndarray:
    """The integers in Paddle's output, in storage order: int8 stored +128 (as uint8); int4 two to a
    byte, low nibble first, stored +8."""
    flat = raw.reshape(-1).view(np.uint8).astype(np.int64)
    if name == "wint8":
        return flat - 128
    return np.stack([flat & 0xF, flat >> 4], axis=1).reshape(-1) - 8


def _learn_layout(paddle, name: str) -> np.ndarray:
    """perm[s] = the position i * OUT + j (Paddle's [in, out]) of the integer in storage slot s.

    Each probe sets one anchor row to the top level L (so every scale is exactly 1 and q == w) and
    writes the base-(2L-1) digits of each other position's index as integers in (-L, L); the anchor
    row's slots read L in every probe and are placed by a second set with another anchor row."""
    levels = LEVELS[name]
    base = 2 * levels - 1
    n = IN * OUT
    digits = int(np.ceil(np.log(n) / np.log(base)))
    positions = np.arange(n)
    perm = np.full(n, -1)
    for anchor in (0, 1):
        decoded = np.zeros(n, dtype=np.int64)
        is_anchor = np.ones(n, dtype=bool)
        for k in range(digits):
            w = ((positions // base**k) % base - (levels - 1)).reshape(IN, OUT).astype(np.float32)
            w[anchor] = levels
            raw, scales = _paddle_raw(paddle, w, name, "float16")
            assert np.all(scales == 1.0)
            slot = _slots(raw, name)
            is_anchor &= slot == levels
            decoded += (slot + levels - 1) * base**k
        found = np.where(is_anchor, -1, decoded)
        perm = np.where(perm == -1, found, perm)  # the second set fills the first one's anchor row
    assert sorted(perm.tolist()) == list(range(n)), "the layout is not a permutation of the integers"
    return perm


@pytest.fixture(scope="module")
def layouts(paddle):
    return {name: _learn_layout(paddle, name) for name in LEVELS}


def paddle_quantize(paddle, layouts, weight_t: np.ndarray, name: str, dtype: str):
    """Paddle's integers [out, in] and scales [out] for a weight [out, in], layout undone."""
    raw, scales = _paddle_raw(paddle, np.ascontiguousarray(weight_t.T), name, dtype)
    ints = np.empty(IN * OUT, dtype=np.int64)
    ints[layouts[name]] = _slots(raw, name)
    return ints.reshape(IN, OUT).T, scales


def _halves(levels: int) -> np.ndarray:
    """k + 0.5 across the range, at most IN - 1 of them."""
    return np.arange(-levels + 0.5, levels, 1.0 if levels < IN // 2 else 2.0)


def fixed_weight(name: str, dtype: str) -> np.ndarray:
    """[out, in] float32 in DTYPE: random rows, and rows for the edge cases of the scheme."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((OUT, IN)).astype(np.float32) * 0.05
    levels = LEVELS[name]
    w[0] = 0.0  # an all-zero channel: scale 0
    w[1, :] = rng.uniform(-0.5, 0.5, IN)
    w[1, 5] = -3.0  # absmax from a negative value
    # halves exactly: scale 1 (absmax = L) and values k + 0.5, where round-half-to-even differs
    w[2, :] = 0.25
    w[2, 0] = levels
    halves = _halves(levels)
    w[2, 1 : 1 + len(halves)] = halves
    w[3, :] = 1e-3  # tiny values: scales near float16's subnormals
    w[4, :] = rng.standard_normal(IN) * 100  # large values
    return to_dtype(w, dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["wint8", "wint4"])
def test_cpu_kernel_emulation_equals_paddles_weight_quantize(paddle, layouts, name, dtype):
    w = fixed_weight(name, dtype)
    ref_ints, ref_scales = paddle_quantize(paddle, layouts, w, name, dtype)
    ints, scales = quantize(w, name, dtype=dtype, kernel="cpu")
    np.testing.assert_array_equal(scales, ref_scales)
    assert scales[0] == 0 and scales[1] == to_dtype(np.float32([3.0 / LEVELS[name]]), dtype)[0]
    # the zero channel's integers are 0/0 in Paddle's kernel (undefined); its weight is 0 either way
    np.testing.assert_array_equal(ints[1:], ref_ints[1:])
    assert not ints[0].any() and not dequantize(ints, scales, dtype)[0].any()
    # halves round away from zero: np.rint would give the even neighbour
    levels = LEVELS[name]
    halves = _halves(levels)
    got = ref_ints[2, 1 : 1 + len(halves)]
    np.testing.assert_array_equal(got, np.sign(halves) * np.ceil(np.abs(halves)))
    assert ints[1, 5] == -levels


@pytest.mark.parametrize("name", ["wint8", "wint4"])
def test_gpu_kernel_emulation_differs_from_the_cpu_kernel_only_by_its_divisor(paddle, layouts, name):
    """FastDeploy runs the GPU kernel: q = lroundf(w / absmax * L), the float32 absmax, not the rounded
    scale. Same scales as Paddle's CPU kernel; integers at most one apart, and where they differ
    the GPU's is the nearest integer to w / absmax * L."""
    dtype = "bfloat16"
    w = fixed_weight(name, dtype)
    cpu_ints, cpu_scales = paddle_quantize(paddle, layouts, w, name, dtype)
    ints, scales = quantize(w, name, dtype=dtype)
    np.testing.assert_array_equal(scales, cpu_scales)
    rows = slice(1, None)  # row 0: the zero channel
    gap = np.abs(ints[rows].astype(int) - cpu_ints[rows])
    assert gap.max() <= 1
    absmax = np.abs(w).max(axis=1, keepdims=True)[rows].astype(np.float64)
    exact = w[rows] / absmax * LEVELS[name]
    assert np.all(np.abs(ints[rows] - exact) <= 0.5 + 1e-5)
    differs = gap == 1
    # bfloat16 scales are off absmax / L by up to 2^-9: a visible share of integers move
    assert 0 < differs.mean() < 0.2, differs.mean()


def test_gpu_kernel_rounds_halves_away_from_zero():
    levels = LEVELS["wint8"]
    halves = np.arange(-levels + 0.5, levels, 1.0, dtype=np.float32)
    # the GPU's quotient (w / absmax) * L is exactly k + 0.5 for most k; keep those
    exact = (halves / np.float32(levels)) * np.float32(levels) == halves
    assert exact.sum() > 100
    w = np.concatenate([[np.float32(levels)], halves]).astype(np.float32)[None, :]
    ints, scales = quantize(w, "wint8")
    assert scales[0] == 1.0
    got = ints[0, 1:][exact]
    np.testing.assert_array_equal(got, np.sign(halves[exact]) * np.ceil(np.abs(halves[exact])))
    assert not np.array_equal(got, np.rint(halves[exact]))
    # float32 x + 0.5 would round 0.49999997 up
    assert round_half_away(np.float32([0.49999997, -0.49999997, 2.5, -2.5])).tolist() == [0, 0, 3, -3]


@pytest.mark.parametrize("name", ["wint8", "wint4"])
def test_dequantized_error_is_within_half_a_step(name):
    rng = np.random.default_rng(3)
    w = to_dtype(rng.standard_normal((96, 160)).astype(np.float32), "bfloat16")
    deq = fake_quantize(w, name)
    levels = LEVELS[name]
    absmax = np.abs(w).max(axis=1, keepdims=True)
    err = np.abs(deq - w)
    # half a step, plus the bfloat16 rounding of the scale (2^-9 of absmax) and of the product
    assert np.all(err <= absmax * (0.5 / levels + 2**-9) + np.abs(w) * 2**-8)
    assert err.mean() > absmax.mean() / levels / 8  # it did quantize
    assert len(np.unique(deq[0])) <= 2 * levels + 1
    assert fake_quantize(w, None) is w


def test_fake_quantize_by_blocks_of_rows_equals_the_whole():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((2 * ROWS_AT_ONCE + 3, 24)).astype(np.float32)
    for name in LEVELS:
        np.testing.assert_array_equal(fake_quantize(w, name), dequantize(*quantize(w, name)))


def test_bfloat16_rounding_is_to_nearest_even():
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8)], dtype=np.float32)
    assert to_dtype(x, "bfloat16").tolist() == [1.0, 1.0, 1 + 2**-6, 1 + 2**-7, -1.0]


def test_an_unknown_quantization_is_refused():
    with pytest.raises(UserError, match="wint2"):
        quantize(np.ones((2, 2), np.float32), "wint2")


# -- the engine ---------------------------------------------------------------------------------

PROMPTS = ["the quick brown fox", "alpha bravo charlie delta echo"]


def test_engine_logits_drift_from_float32_by_a_bounded_nonzero_amount(tiny_dense):
    from ernie_ops.serve.engine import Engine, SamplingParams

    drift = {}
    for name in ("wint8", "wint4"):
        engine = Engine.load(tiny_dense, reference=True, quantization=name)
        params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, return_logits=True)
        for r in engine.generate(PROMPTS, params):
            quantized = np.stack(r.logits)
            # ERNIEKit's own forward keeps the unquantized float32 weights: the reference
            full = engine.full_logits(r.prompt_token_ids + r.token_ids)
            start = len(r.prompt_token_ids) - 1
            reference = full[start : start + len(r.logits)]
            diff = np.abs(quantized - reference)
            drift[name] = max(drift.get(name, 0.0), float(diff.max()) / float(np.abs(reference).max()))
    assert 2e-3 < drift["wint8"] < 0.05, drift
    assert drift["wint8"] < drift["wint4"] < 0.5, drift


# -- serving ------------------------------------------------------------------------------------

CPU_PROFILE = (
    Path(__file__).parent.parent / "recipes" / "serve" / "cpu" / "ERNIE-4.5-0.3B_wint8_cpu_paddle.yaml"
)


def test_a_wint8_profile_is_served_by_the_embedded_engine(tiny_dense, cli, tmp_path):
    import openai

    port = free_port()
    started = cli(
        "serve",
        str(CPU_PROFILE),
        "--set",
        f"model={tiny_dense}",
        "--set",
        f"port={port}",
        "--detach",
        cwd=tmp_path,
        timeout=180,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="ERNIE-4.5-0.3B-wint8",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            temperature=0,
        )
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4
        (card,) = client.models.list().data
        assert card.model_extra["quantization"] == "wint8"  # what the weights went through
        status = json.loads(cli("serve", "status", "--json", cwd=tmp_path).stdout)
        (ours,) = [s for s in status if s["port"] == port]  # others' servers may be listed too
        command = ours["command"]
        assert command[command.index("--quantization") + 1] == "wint8"
    finally:
        stopped = cli("serve", "stop", "--port", str(port), cwd=tmp_path)
    assert stopped.returncode == 0


@pytest.mark.parametrize(
    ("quantization", "engine", "problem"),
    [
        ("wint2", "paddle", "pre-quantized -2Bits checkpoint and FastDeploy on a GPU"),
        ("block_wise_fp8", "paddle", "fp8 needs FastDeploy"),
        ("{quantization: mix_quant, dense_quant_type: wint8, moe_quant_type: wint4}", "paddle", "dense"),
        ("wint4", "paddle", None),
        ("bf16", "paddle", None),
        ("wint2", "fastdeploy", None),
    ],
)
def test_the_embedded_engine_takes_bf16_wint8_wint4_and_refuses_the_rest(
    tmp_path, quantization, engine, problem
):
    from ernie_ops.serve.backends.embedded import BACKEND
    from ernie_ops.serve.profile import load_profile

    path = tmp_path / "p.yaml"
    path.write_text(f"model: /m\nengine: {engine}\nquantization: {quantization}\n")
    if problem is None:
        profile = load_profile(path)
        if engine == "paddle":
            argv = BACKEND.command(profile).argv
            assert ("--quantization" in argv) == (quantization != "bf16")
        return
    with pytest.raises(UserError) as err:
        load_profile(path)
    assert f"{path}:3" in str(err.value) + str(err.value.where) and problem in str(err.value)
    # a profile without engine: that lands on the embedded engine is refused when its command is built
    path.write_text(f"model: /m\nquantization: {quantization}\n")
    with pytest.raises(UserError, match="embedded CPU engine"):
        BACKEND.command(load_profile(path))
