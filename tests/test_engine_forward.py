"""The embedded engine's forward on its own: weights read straight from the safetensors files
(float32 and bfloat16, tied and untied LM head) give ERNIEKit's logits, and a batched decode step
gives each row what it gets alone."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ernie_ops.errors import UserError
from ernie_ops.serve.engine.forward import DenseForward, load_checkpoint, load_reference, reference_logits
from ernie_ops.serve.engine.kv_cache import prefill_inputs
from ernie_ops.serve.engine.weights import FileWeights

PROMPTS = [[5, 17, 300, 42, 9, 88, 120], [7, 7, 64], [900, 3, 11, 250, 251]]


def logits_of(net: DenseForward, prompt: list[int]) -> np.ndarray:
    """Logits [n, V] of every position of PROMPT, fed a token at a time through the cache."""
    cache = net.new_cache(1, len(prompt))
    rows = []
    for at, token in enumerate(prompt):
        bias = np.zeros((1, 1, at + 1), dtype=np.float32)
        rows.append(net.forward(np.array([[token]]), np.array([[at]]), bias, cache, at)[0])
    return np.stack(rows)


@pytest.fixture(scope="module")
def reference(tiny_dense):
    return load_reference(tiny_dense)


def test_forward_from_the_files_equals_erniekit(tiny_dense, reference):
    config, _, _ = load_checkpoint(tiny_dense)
    net = DenseForward.load(tiny_dense, config)
    assert net.tied and net.head is net.embed  # the tiny model ties: one table
    for prompt in PROMPTS:
        np.testing.assert_allclose(
            logits_of(net, prompt), reference_logits(reference, prompt), atol=1e-4, rtol=0
        )


def test_batched_decode_equals_each_row_alone(tiny_dense):
    config, _, _ = load_checkpoint(tiny_dense)
    net = DenseForward.load(tiny_dense, config)
    ids, positions, bias, real = prefill_inputs(PROMPTS)  # left-padded to the longest
    width = ids.shape[1]
    cache = net.new_cache(len(PROMPTS), width + 3)
    batched = [net.forward(ids, positions, bias, cache, 0)]
    valid = np.where(real, np.float32(0), np.float32(-np.inf))
    nxt = np.array([[11], [12], [13]])
    for step in range(3):  # three decode steps of all rows at once
        valid = np.concatenate([valid, np.zeros((len(PROMPTS), 1), dtype=np.float32)], axis=1)
        pos = np.array([[len(p) + step] for p in PROMPTS])
        batched.append(net.forward(nxt + step, pos, valid[:, None, :], cache, width + step))
    for row, prompt in enumerate(PROMPTS):
        alone = logits_of(net, [*prompt, *(int(nxt[row, 0]) + s for s in range(3))])
        got = np.stack([b[row] for b in batched])
        np.testing.assert_allclose(got, alone[len(prompt) - 1 :], atol=1e-4, rtol=0)


def test_untied_lm_head_from_the_files_equals_erniekit(tiny_dense, tmp_path):
    from ernie.modeling_moe import Ernie4_5_MoeForCausalLM

    config, _, _ = load_checkpoint(tiny_dense)
    config.tie_word_embeddings = False
    config.moe_group = "dummy"  # no process group (as ernie_ops.tiny_model builds it)
    model = Ernie4_5_MoeForCausalLM(config)
    model.eval()
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    net = DenseForward(config, FileWeights(tmp_path))
    assert not net.tied and net.head.shape == net.embed.shape and net.head is not net.embed
    np.testing.assert_allclose(
        logits_of(net, PROMPTS[0]), reference_logits(model, PROMPTS[0]), atol=1e-4, rtol=0
    )


def bfloat16_copy(src: Path, dest: Path) -> None:
    """The checkpoint with every tensor stored as bfloat16 (a plain safetensors writer)."""
    import ml_dtypes

    shutil.copytree(src, dest)
    file = src / "model.safetensors"
    with file.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out_header, chunks, offset = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=np.float32).astype(ml_dtypes.bfloat16)
        chunks.append(array.tobytes())
        out_header[name] = {
            "dtype": "BF16",
            "shape": info["shape"],
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    raw = json.dumps(out_header).encode()
    raw += b" " * (-len(raw) % 8)
    (dest / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(chunks))


def test_bfloat16_weights_are_widened_exactly(tiny_dense, tmp_path):
    import ml_dtypes

    bfloat = tmp_path / "bf16"
    bfloat16_copy(tiny_dense, bfloat)
    f32, bf16 = FileWeights(tiny_dense), FileWeights(bfloat)
    name = "ernie.layers.1.mlp.up_gate_proj.weight"
    want = f32.read(name).astype(ml_dtypes.bfloat16).astype(np.float32)
    got = bf16.read(name)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert not np.array_equal(got, f32.read(name))  # the rounding happened
    table = "ernie.embed_tokens.weight"
    np.testing.assert_array_equal(bf16.read_transposed(table), bf16.read(table).T)


def test_transposed_read_in_blocks(tiny_dense, monkeypatch):
    from ernie_ops.serve.engine import weights

    monkeypatch.setattr(weights, "TRANSPOSE_ROWS", 300)  # 1024 rows: blocks of 300, 300, 300, 124
    files = FileWeights(tiny_dense)
    table = "ernie.embed_tokens.weight"
    out = files.read_transposed(table)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, files.read(table).T)


def test_a_missing_tensor_is_named_with_a_hint(tiny_dense):
    with pytest.raises(UserError, match=r"no tensor ernie\.layers\.9\.mlp\.down_proj\.weight") as err:
        FileWeights(tiny_dense).read("ernie.layers.9.mlp.down_proj.weight")
    assert "ERNIEKit" in (err.value.hint or "")


def test_a_checkpoint_without_safetensors_is_refused(tiny_dense, tmp_path):
    (tmp_path / "config.json").write_text((tiny_dense / "config.json").read_text())
    with pytest.raises(UserError, match=r"model\.safetensors"):
        FileWeights(tmp_path)


def test_paddles_matmul_gets_as_many_threads_as_numpys_blas(tiny_dense):
    # Paddle's import sets OMP_NUM_THREADS=1 when it is unset, so its MKL would run one thread
    # while numpy's BLAS runs every CPU; imported first here, as a server or test may do
    script = f"""
import ctypes, glob, os
import paddle
from ernie_ops.serve.engine import Engine
Engine.load({str(tiny_dense)!r})
mkl = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(paddle.__file__), "libs", "libmklml_intel.so"))[0])
print(mkl.MKL_Get_Max_Threads(), len(os.sched_getaffinity(0)))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    mkl, cpus = done.stdout.split()[-2:]
    assert int(mkl) == int(cpus)


@pytest.mark.parametrize(
    ("mkl", "length"),
    [(True, 40), (False, 40), (False, 120)],
    ids=["paddle-mkl", "openblas-small-kernel", "openblas-sgemm"],
)
def test_a_prompt_through_either_prompt_matmul_equals_erniekit(
    tiny_dense, reference, mkl, length, monkeypatch
):
    from ernie_ops.serve.engine import forward

    monkeypatch.setattr(forward, "_mkl_for_prompts", lambda: mkl)
    small = forward.SMALL_ROWS if mkl else forward.SMALL_ROWS_OPENBLAS
    monkeypatch.setattr(forward, "_small_rows", lambda: small)
    config, _, _ = load_checkpoint(tiny_dense)
    net = DenseForward.load(tiny_dense, config)
    prompt = [int(t) for t in np.random.default_rng(1).integers(3, 1000, length)]
    # 40 rows beside MKL and 120 beside OpenBLAS: the prompt matmul; 40 beside OpenBLAS: the small kernel
    assert (len(prompt) > small) == (mkl or length == 120)
    ids, positions, bias, _ = prefill_inputs([prompt])
    logits = net.forward(ids, positions, bias, net.new_cache(1, len(prompt)), 0)
    np.testing.assert_allclose(logits[0], reference_logits(reference, prompt)[-1], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("cpuinfo", "mkl"),
    [
        ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: avx512f\n", True),
        ("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: avx512f\n", False),
        ("processor\t: 0\nBogoMIPS\t: 50.00\n", True),  # no vendor (an Arm machine): as before
        (None, True),  # no /proc/cpuinfo
    ],
)
def test_prompts_go_through_mkl_on_intel_cpus_only(cpuinfo, mkl, tmp_path, monkeypatch):
    from ernie_ops.serve.engine import forward

    fake = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        fake.write_text(cpuinfo)
    monkeypatch.setattr(forward, "CPUINFO", fake)
    forward._mkl_for_prompts.cache_clear()
    try:
        assert forward._mkl_for_prompts() is mkl
    finally:
        forward._mkl_for_prompts.cache_clear()


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("rows", [2, 5, 8, 24])
@pytest.mark.parametrize("shape", [(2560, 1024), (1031, 1024), (64, 3072), (7, 5)])
def test_small_matmul_in_row_blocks_equals_the_product(rows, shape, threads, monkeypatch):
    """Blocks that divide the weight, a remainder after the last whole block, a weight smaller
    than one block; one thread, or three taking runs of blocks from a shared counter."""
    from ernie_ops.serve.engine import forward

    crew = forward._Crew(threads - 1) if threads > 1 else None
    monkeypatch.setattr(forward, "_helpers", lambda: (threads, crew))
    rng = np.random.default_rng(rows)
    weight = rng.standard_normal(shape, dtype=np.float32)
    x = rng.standard_normal((rows, shape[1]), dtype=np.float32)
    block = forward._row_block(rows, *shape)
    assert rows * block * shape[1] <= forward.SMALL_PRODUCT or block == 1
    got = forward._small_matmul(x, weight)
    want = x.astype(np.float64) @ weight.T.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize(
    ("scores", "queries"), [(1, 256), (1 << 16, 3), (1, 2)], ids=["rows", "queries", "rows-and-queries"]
)
def test_prefill_attention_in_blocks_equals_all_at_once(tiny_dense, monkeypatch, scores, queries):
    """A row per block, a long prompt's queries a few at a time (the last block shorter), or both."""
    from ernie_ops.serve.engine import forward

    config, _, _ = load_checkpoint(tiny_dense)
    net = DenseForward.load(tiny_dense, config)
    ids, positions, bias, _ = prefill_inputs(PROMPTS)
    whole = net.forward(ids, positions, bias, net.new_cache(len(PROMPTS), ids.shape[1]), 0)
    monkeypatch.setattr(forward, "SCORES", scores)
    monkeypatch.setattr(forward, "QUERIES", queries)
    cache = net.new_cache(len(PROMPTS), ids.shape[1])
    blocks = net.forward(ids, positions, bias, cache, 0)
    np.testing.assert_allclose(blocks, whole, atol=1e-5, rtol=0)


def test_decode_attention_equals_the_prompt_path(tiny_dense):
    """The decode-only attention (one query a row) against the prompts' for the same step."""
    config, _, _ = load_checkpoint(tiny_dense)
    net = DenseForward.load(tiny_dense, config)
    rng = np.random.default_rng(3)
    kv, group, dim, width = net.kv_heads, net.heads // net.kv_heads, net.head_dim, 9
    q = rng.standard_normal((3, kv, group, 1, dim), dtype=np.float32)
    keys, values = (rng.standard_normal((3, kv, width, dim), dtype=np.float32) for _ in range(2))
    bias = np.zeros((3, 1, width), dtype=np.float32)
    bias[1, 0, :4] = -np.inf  # a left-padded row
    one, prompt = (np.full((3, 1, net.heads * dim), np.nan, dtype=np.float32) for _ in range(2))
    net._attend_one(q, keys, values, bias, one)
    net._attend(q, keys, values, bias, prompt)
    np.testing.assert_allclose(one, prompt, atol=1e-6, rtol=0)


def test_a_failing_task_is_raised_on_the_caller_and_the_crew_goes_on():
    from ernie_ops.serve.engine import forward

    crew = forward._Crew(2)
    done: list[int] = []
    failing = {5}

    def job() -> None:
        tasks = iter(range(12))  # shared by the three threads: each task once

        def work() -> None:
            for i in tasks:
                if i in failing:
                    raise ValueError(f"task {i}")
                done.append(i)

        crew.run(2, work)

    with pytest.raises(ValueError, match="task 5"):
        job()
    assert 5 not in done
    failing.clear()
    done.clear()
    job()  # the crew serves the next job, and waits for all of it
    assert sorted(done) == list(range(12))


def test_a_second_caller_works_alone_while_the_crew_is_busy():
    import threading

    from ernie_ops.serve.engine import forward

    crew = forward._Crew(1)
    started, release = threading.Event(), threading.Event()

    def first() -> None:  # holds the crew (its helper and the calling thread) until released
        started.set()
        release.wait(timeout=30)

    holder = threading.Thread(target=crew.run, args=(1, first))
    holder.start()
    assert started.wait(timeout=30)
    ran_on: list[str] = []
    crew.run(1, lambda: ran_on.append(threading.current_thread().name))
    assert ran_on == [threading.current_thread().name]  # on this thread, once, not waiting
    release.set()
    holder.join(timeout=30)
    assert not holder.is_alive()


def test_one_blas_thread_is_left_by_the_last_user_with_the_count_the_first_found():
    """Two engines in a process may overlap in a prompt's attention: whoever leaves first must not
    restore the thread count while the other is inside, and the last one restores the original
    count (each restoring what it saw on entry would leave numpy's OpenBLAS on 1 thread for good)."""
    from ernie_ops.serve.engine import forward

    openblas = forward._openblas_threads()
    if openblas is None:
        pytest.skip("numpy's BLAS is not an OpenBLAS in this process")
    get, set_ = openblas
    original = get()
    set_(2)
    try:
        one = forward.ONE_BLAS_THREAD
        one.__enter__()  # engine A
        one.__enter__()  # engine B, while A is inside: it sees 1 thread
        assert get() == 1
        one.__exit__(None, None, None)  # A leaves first
        assert get() == 1, "B is still inside"
        one.__exit__(None, None, None)  # B leaves last
        assert get() == 2
    finally:
        set_(original)
