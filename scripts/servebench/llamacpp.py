"""Llama.cpp in-process (llama-cpp-python's C API) and through its own benchmark binaries."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from servebench.checkpoint import BATCH, PROMPT_LEN, SEED, prompts
from servebench.measure import peak_rss_mb, vm_rss_mb


class LlamaContext:
    """A GGUF model and a context of BATCH sequences through llama-cpp-python's C API (its `Llama`
    class has no n_seq_max), with llama.cpp's extra buffers off where the engine turns them off."""

    def __init__(self, path: Path, threads: int, n_ctx: int):
        import llama_cpp.llama_cpp as lib

        from ernie_ops.serve.backends import _llamacpp_server

        if not _llamacpp_server.extra_buffers():
            _llamacpp_server.disable_extra_buffers()  # AMX CPUs: q8_0 / q4_0 crash in them (see there)
        self.lib = lib
        lib.llama_backend_init()
        self.model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_seq_max = n_ctx, BATCH
        params.n_batch = params.n_ubatch = BATCH * PROMPT_LEN  # every prompt in one decode call
        params.n_threads = params.n_threads_batch = threads
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {path}")
        self.vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))

    def close(self) -> None:
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)

    def generate(self, batch: list[list[int]], new_tokens: int) -> dict[str, float]:
        """All prompts in one decode call, then one decode call per step for every sequence (greedy),
        as llama-batched-bench does; the same timings as `engine_run`."""
        import numpy as np

        lib = self.lib
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        n = len(batch)
        llama_batch = lib.llama_batch_init(max(sum(len(p) for p in batch), n), 0, n)

        def decode(items: list[tuple[int, int, int, bool]]) -> None:
            llama_batch.n_tokens = len(items)
            for i, (token, pos, seq, logits) in enumerate(items):
                llama_batch.token[i], llama_batch.pos[i], llama_batch.logits[i] = token, pos, logits
                llama_batch.n_seq_id[i] = 1
                llama_batch.seq_id[i][0] = seq
            code = lib.llama_decode(self.ctx, llama_batch)
            if code != 0:
                raise RuntimeError(f"llama_decode returned {code}")

        def greedy(i: int) -> int:
            row = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, i), shape=(self.vocab,))
            return int(np.argmax(row))

        try:
            started = time.perf_counter()
            decode([(t, p, s, p == len(pr) - 1) for s, pr in enumerate(batch) for p, t in enumerate(pr)])
            ends = list(itertools.accumulate(len(p) for p in batch))
            tokens = [greedy(end - 1) for end in ends]
            first = time.perf_counter()
            for step in range(new_tokens - 1):
                decode([(tokens[s], len(batch[s]) + step, s, True) for s in range(n)])
                tokens = [greedy(s) for s in range(n)]
            ended = time.perf_counter()
        finally:
            lib.llama_batch_free(llama_batch)
        return {
            "ttft_s": first - started,
            "decode_tok_s": n * (new_tokens - 1) / (ended - first),
            "e2e_tok_s": n * new_tokens / (ended - started),
        }


def llamacpp_phase(path: Path, threads: int, new_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    llama = LlamaContext(path, threads, BATCH * 256)
    out: dict[str, Any] = {"load_s": time.perf_counter() - started, "load_peak_rss_mb": peak_rss_mb()}
    try:
        llama.generate(prompts(1, PROMPT_LEN, 99), 2)  # warm-up, not counted
        b1 = llama.generate(prompts(1, PROMPT_LEN, SEED), new_tokens)
        llama.generate(prompts(BATCH, PROMPT_LEN, 99), 2)
        b8 = llama.generate(prompts(BATCH, PROMPT_LEN, SEED), new_tokens)
        rss = vm_rss_mb(os.getpid())  # before close: the model's pages are mapped from the file
    finally:
        llama.close()
    return out | {
        "b1_decode_tok_s": b1["decode_tok_s"],
        "b1_ttft_s": b1["ttft_s"],
        "b8_e2e_tok_s": b8["e2e_tok_s"],
        "b8_decode_tok_s": b8["decode_tok_s"],
        "rss_mb": rss,
        "peak_rss_mb": peak_rss_mb(),
    }


OWN_BENCHMARKS = ("llama-bench", "llama-batched-bench")


def own_benchmarks() -> dict[str, str] | None:
    """llama.cpp's own benchmark binaries beside the llama-server `ernie-ops serve` runs (the build
    script installs the three from one build tree); None when either is missing."""
    from ernie_ops.serve.backends import _llama_server

    try:
        server = _llama_server.find()
    except Exception:  # a bad LLAMA_SERVER: the served contender reports it
        return None
    if server is None:
        return None
    found = {name: Path(server).with_name(name) for name in OWN_BENCHMARKS}
    if all(p.is_file() and os.access(p, os.X_OK) for p in found.values()):
        return {name: str(p) for name, p in found.items()}
    return None


def own_output(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """A benchmark's run: its results on stdout, its log on stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def own_phase(binaries: dict[str, str], path: Path, threads: int, new_tokens: int) -> dict[str, Any]:
    """llama.cpp's own figures for the GGUF at PATH: llama-bench (batch 1) and llama-batched-bench
    (BATCH sequences), both at THREADS threads, with their defaults otherwise (as a user runs them)."""
    import resource

    return (
        own_batch1(binaries, path, threads, new_tokens)
        | own_batched(binaries, path, threads, new_tokens)
        | {
            "rss_mb": float("nan"),  # the binaries have exited: their peak only
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "own": "llama-bench / llama-batched-bench",
        }
    )


def own_batch1(binaries: dict[str, str], path: Path, threads: int, new_tokens: int) -> dict[str, Any]:
    """llama-bench's batch-1 figures: decode (its tg test of the new tokens) and the time to first
    token (the prompt over its pp rate)."""
    bench = [binaries["llama-bench"], "-m", str(path), "-t", str(threads), "-p", str(PROMPT_LEN)]
    # one repetition (after its warm-up run), like the served run's one batch-1 request: the rounds
    # repeat both, and the best round of each is compared (an average would count the noisy ones)
    tests = json.loads(own_output([*bench, "-n", str(new_tokens), "-r", "1", "-o", "json"]).stdout)
    pp = next(t for t in tests if t["n_prompt"] == PROMPT_LEN and t["n_gen"] == 0)
    tg = next(t for t in tests if t["n_gen"] == new_tokens and t["n_prompt"] == 0)
    return {
        "b1_decode_tok_s": tg["avg_ts"],
        "b1_ttft_s": PROMPT_LEN / pp["avg_ts"],
        "llama_bench": {"pp": pp["samples_ts"], "tg": tg["samples_ts"]},
    }


def own_batched(binaries: dict[str, str], path: Path, threads: int, new_tokens: int) -> dict[str, Any]:
    """llama-batched-bench's BATCH sequences: BATCH x new tokens over its total time (the first
    token comes from the prefill's logits, as a server's does, so it runs new tokens - 1 steps)."""
    n = str(threads)
    steps = new_tokens - 1
    batched = [binaries["llama-batched-bench"], "-m", str(path), "-t", n, "-tb", n]
    sizes = ["-c", str(BATCH * (PROMPT_LEN + steps)), "-npp", str(PROMPT_LEN), "-ntg", str(steps)]
    # its logger is asynchronous and not flushed at exit (llama.cpp issue 22142): the last lines are
    # lost in about 1 run of 3 on the tiny model. A batch-1 case after ours gives the logger time;
    # when that is too short (a tiny model), the run is repeated
    for _attempt in range(3):
        proc = own_output([*batched, *sizes, "-npl", f"{BATCH},1", "--output-format", "jsonl"])
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"n_kv_max"')]
        rows = [row for row in rows if row["pl"] == BATCH]
        if rows:
            break
    else:  # or it skipped the case: it does not fit its context (a silent `continue` there)
        raise RuntimeError(
            f"llama-batched-bench printed no result:\n{proc.stdout[-1000:]}{proc.stderr[-3000:]}"
        )
    row = rows[-1]
    return {
        "b8_e2e_tok_s": BATCH * new_tokens / row["t"],
        "b8_decode_tok_s": row["speed_tg"],
        "llama_batched_bench": row,
    }
