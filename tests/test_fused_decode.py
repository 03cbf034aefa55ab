"""The compiled decode step (serve/engine/fused_decode.c) against the numpy forward it replaces for
steps of up to MAX_ROWS rows: the same logits and the same keys and values written into the cache,
with each set of kernels (AVX-512, AVX2, any CPU), at ERNIE 4.5's shapes and at odd ones (vector
tails, row tails, a lone KV head), rows with their own padding and positions, two threads stepping at
once, and what it does not compute (or where it would be slower) left to numpy."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from ernie_ops.serve.engine import fused_decode
from ernie_ops.serve.engine.forward import LINEARS, DenseForward, load_checkpoint


class ArrayWeights:
    """Random weights by ERNIEKit's parameter names, in Paddle's layout ([in, out] linears)."""

    def __init__(self, config: SimpleNamespace, seed: int = 0):
        rng = np.random.default_rng(seed)
        hidden, inner = config.hidden_size, config.intermediate_size
        width = (config.num_attention_heads + 2 * config.num_key_value_heads) * config.head_dim
        shapes = {
            "ernie.embed_tokens.weight": (config.vocab_size, hidden),
            "ernie.norm.weight": (hidden,),
            "lm_head.weight": (hidden, config.vocab_size),
        }
        for i in range(config.num_hidden_layers):
            p = f"ernie.layers.{i}."
            outs = (width, hidden, 2 * inner, hidden)
            ins = (hidden, config.num_attention_heads * config.head_dim, hidden, inner)
            shapes |= {p + f"{n}.weight": (i_, o) for n, i_, o in zip(LINEARS, ins, outs, strict=True)}
            shapes |= {
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
            }
        self.tensors = {
            name: (rng.standard_normal(shape, dtype=np.float32) * (0.5 if len(shape) == 1 else 0.2))
            for name, shape in shapes.items()
        }

    def has(self, name: str) -> bool:
        return name in self.tensors

    def read(self, name: str) -> np.ndarray:
        return self.tensors[name].copy()

    def read_transposed(self, name: str) -> np.ndarray:
        return np.ascontiguousarray(self.tensors[name].T)


def odd_config(**changes: object) -> SimpleNamespace:
    """A dense config whose widths are not multiples of the kernels' 16 lanes or 4 rows."""
    config = SimpleNamespace(
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=6,
        hidden_size=37,
        intermediate_size=29,
        vocab_size=51,
        num_hidden_layers=2,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        use_moe=False,
        use_rmsnorm=True,
        rope_3d=False,
    )
    vars(config).update(changes)
    return config


def steps_of(
    net: DenseForward, rows: list[list[int]], pads: list[int] | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits [steps, B, V] of the token ROWS fed a step at a time, all rows at once, after PADS
    padding columns a row (as rows left-padded in a batch), and the cache they leave."""
    pads = pads or [0] * len(rows)
    width = max(pads)
    cache = net.new_cache(len(rows), width + len(rows[0]) + 2)
    rng = np.random.default_rng(7)
    for c in cache:  # padding columns hold garbage: the bias must hide it
        c[:, :, :width] = rng.standard_normal(c[:, :, :width].shape, dtype=np.float32)
    bias = np.full((len(rows), cache[0].shape[2]), -np.inf, dtype=np.float32)
    for r, pad in enumerate(pads):
        bias[r, pad:width] = 0  # earlier real tokens: the garbage stands in for their keys
    out = []
    for i in range(len(rows[0])):
        at = width + i
        bias[:, at] = 0
        ids = np.array([[row[i]] for row in rows])
        positions = np.array([[width - pad + i] for pad in pads])
        out.append(net.forward(ids, positions, bias[:, None, : at + 1], cache, at))
    return np.stack(out), cache


def both_paths(net: DenseForward, rows: list[list[int]], pads: list[int] | None = None) -> None:
    assert net.fused is not None and net.fused.takes(net.new_cache(len(rows), 1))
    fused, fused_cache = steps_of(net, rows, pads)
    compiled, net.fused = net.fused, None
    try:
        numpy_, numpy_cache = steps_of(net, rows, pads)
    finally:
        net.fused = compiled
    np.testing.assert_allclose(fused, numpy_, atol=2e-5, rtol=1e-5)
    for a, b in zip(fused_cache, numpy_cache, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


TOKENS = [3, 50, 0, 17, 17, 9, 44]


@pytest.fixture(params=[512, 256, 128], ids=["avx512", "avx2", "any-cpu"])
def width(request, monkeypatch):
    """Each set of kernels this CPU runs (AVX-512, AVX2, the plain one every CPU runs), on steps of
    up to 16 rows whatever the engine gives it."""
    if fused_decode.use_kernels(request.param) != request.param:
        fused_decode.use_kernels(0)
        pytest.skip(f"this CPU has no {request.param}-bit vectors")
    monkeypatch.setitem(fused_decode.MAX_ROWS, request.param, 16)
    yield request.param
    fused_decode.use_kernels(0)


def test_the_compiled_step_is_built_in_this_install():
    """setup.py builds it optionally: a failed build would only log, so the suite checks it."""
    assert fused_decode.compiled() is not None


@pytest.mark.parametrize(
    "changes",
    [{}, {"tie_word_embeddings": True}, {"num_key_value_heads": 3}, {"hidden_size": 64, "head_dim": 32}],
    ids=["odd", "tied", "no-gqa", "lanes"],
)
@pytest.mark.parametrize("pads", [[0], [3]])
def test_the_compiled_step_equals_numpy(changes, pads, width):
    config = odd_config(**changes)
    net = DenseForward(config, ArrayWeights(config))
    both_paths(net, [TOKENS], pads)


@pytest.mark.parametrize("batch", [2, 5, 8, 16])
def test_a_batched_compiled_step_equals_numpy(batch, width, monkeypatch):
    """Rows of x in tiles of 4 (AVX2, plain: 2) and the rest, each row with its own position and padding."""
    monkeypatch.setitem(fused_decode.MAX_ROWS, width, batch)  # every count through the compiled step
    config = odd_config(hidden_size=70, intermediate_size=45)
    net = DenseForward(config, ArrayWeights(config))
    rows = [[(t + 7 * r) % config.vocab_size for t in TOKENS] for r in range(batch)]
    both_paths(net, rows, [(3 * r) % 5 for r in range(batch)])


def test_the_compiled_step_equals_numpy_on_the_tiny_model(tiny_dense):
    config, _, _ = load_checkpoint(tiny_dense)
    net = DenseForward.load(tiny_dense, config)
    both_paths(net, [[5, 17, 300, 42, 9, 88, 120, 7, 7, 64]], [2])
    both_paths(net, [[5, 17, 300, 42], [9, 88, 120, 7], [7, 64, 1, 2]], [0, 2, 1])


def test_two_threads_stepping_at_once_get_what_each_gets_alone():
    """One step holds the helper team; the other runs on its own thread meanwhile (both correct)."""
    config = odd_config(hidden_size=256, intermediate_size=512, vocab_size=4000)
    net = DenseForward(config, ArrayWeights(config))
    sequences = [[1, 2, 3, 4, 5, 6] * 4, [9, 8, 7, 6, 5, 4] * 4]
    alone = [steps_of(net, [s])[0] for s in sequences]
    got: list[np.ndarray | None] = [None, None]

    def step(i: int) -> None:
        for _ in range(5):
            got[i] = steps_of(net, [sequences[i]])[0]

    threads = [threading.Thread(target=step, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for want, have in zip(alone, got, strict=True):
        assert have is not None
        np.testing.assert_array_equal(have, want)


def test_what_it_does_not_compute_is_left_to_numpy():
    config = odd_config()
    weights = ArrayWeights(config)
    weights.tensors["ernie.layers.1.mlp.down_proj.bias"] = np.ones(config.hidden_size, dtype=np.float32)
    net = DenseForward(config, weights)
    assert net.fused is None  # a linear bias: the compiled step has none
    plain = DenseForward(config, ArrayWeights(config))
    assert plain.fused is not None
    rows = fused_decode.MAX_ROWS[fused_decode.use_kernels(0)]
    assert plain.fused.takes(plain.new_cache(rows, 4))
    assert not plain.fused.takes(plain.new_cache(rows + 1, 4))  # numpy's batched step


def test_a_token_outside_the_vocabulary_is_refused():
    config = odd_config()
    net = DenseForward(config, ArrayWeights(config))
    cache = net.new_cache(1, 4)
    with pytest.raises(IndexError, match="outside the vocabulary"):
        net.forward(
            np.array([[config.vocab_size]]), np.array([[0]]), np.zeros((1, 1, 1), np.float32), cache, 0
        )


def test_without_the_build_numpy_steps_and_doctor_says_why(monkeypatch):
    from ernie_ops import doctor

    assert doctor.check_compiled_decode()[0].status == doctor.OK
    monkeypatch.setattr(fused_decode, "LIBRARY", "_not_built_here")  # as an install without a compiler
    (check,) = doctor.check_compiled_decode()
    assert check.status == doctor.WARN and "not built" in check.detail and "pip install -e ." in check.fix
    config = odd_config()
    built = fused_decode.compiled()
    assert built is not None
    monkeypatch.setattr(fused_decode, "compiled", lambda: fused_decode.Compiled(built.lib, 128))
    assert DenseForward(config, ArrayWeights(config)).fused is None  # no AVX2: numpy's step is faster
    monkeypatch.setattr(fused_decode, "compiled", lambda: None)
    net = DenseForward(config, ArrayWeights(config))
    assert net.fused is None
    assert net.forward(
        np.array([[1]]), np.array([[0]]), np.zeros((1, 1, 1), np.float32), net.new_cache(1, 2), 0
    ).shape == (
        1,
        config.vocab_size,
    )


def test_a_forked_child_steps_on_its_own():
    """The helpers do not survive a fork: the child's steps run on its one thread, correctly."""
    import os
    import time

    config = odd_config(hidden_size=64, intermediate_size=96)
    net = DenseForward(config, ArrayWeights(config))
    want = steps_of(net, [TOKENS, TOKENS[::-1]])[0]
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only for the same logits
        code = 1
        try:
            code = 0 if np.array_equal(steps_of(net, [TOKENS, TOKENS[::-1]])[0], want) else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:  # a child that hangs fails the test instead of the suite
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's step hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0
