"""PyTorch + transformers, in a child process (so the two frameworks' OpenMP runtimes never meet)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from servebench import SCRIPT
from servebench.checkpoint import BATCH, PROMPT_LEN, SEED, SHAPE, prompts
from servebench.engine import plan
from servebench.measure import peak_rss_mb, vm_rss_mb

# ---------------------------------------------------------------------------------------------
# PyTorch + transformers (child process, so the two frameworks' OpenMP runtimes never meet)


def torch_phase(threads: int, repeat: int, new_tokens: int, quick: bool, out: Path) -> None:
    import torch
    from transformers import Ernie4_5Config, Ernie4_5ForCausalLM  # type: ignore[attr-defined]

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    config = Ernie4_5Config(
        **SHAPE, tie_word_embeddings=True, use_bias=False, hidden_act="silu", rms_norm_eps=1e-5
    )
    started = time.perf_counter()
    model = Ernie4_5ForCausalLM(config).to(torch.float32).eval()
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())

    def timed(batch: list[list[int]], n: int) -> float:
        ids = torch.tensor(batch, dtype=torch.long)
        with torch.inference_mode():
            t0 = time.perf_counter()
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,  # EOS suppressed: fixed lengths
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )
            elapsed = time.perf_counter() - t0
        assert gen.shape[1] == ids.shape[1] + n, gen.shape
        return elapsed

    result: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": params,
        "build_s": build_s,
    }
    for label, b in (("batch1", 1), ("batch8", BATCH)):
        warm, times = plan(label, repeat, quick, new_tokens)
        timed(prompts(b, PROMPT_LEN, 99), warm)  # first-touch allocations, not counted
        full, one = [], []
        for r in range(times):
            batch = prompts(b, PROMPT_LEN, SEED + r)
            one.append(timed(batch, 1))
            full.append(timed(batch, new_tokens))
        t_full, t_one = statistics.median(full), statistics.median(one)
        result[label] = {
            "ttft_s": t_one,
            "decode_tok_s": b * (new_tokens - 1) / (t_full - t_one),
            "e2e_tok_s": b * new_tokens / t_full,
            "wall_s": t_full,
            "runs": times,
        }
        print(
            f"pytorch {label}: decode {result[label]['decode_tok_s']:.2f} tok/s, "
            f"e2e {result[label]['e2e_tok_s']:.2f} tok/s",
            flush=True,
        )
    result["rss_mb"], result["peak_rss_mb"] = vm_rss_mb(os.getpid()), peak_rss_mb()
    out.write_text(json.dumps(result, indent=2) + "\n")


def bench_torch(
    threads: int, repeat: int, new_tokens: int, quick: bool, env: dict[str, str]
) -> dict[str, Any]:
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return {"skipped": "torch is not installed (pip install torch==2.13.0)"}
    except ImportError:
        return {"skipped": "torch is not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        cmd = [
            sys.executable,
            SCRIPT,
            "--torch-phase",
            str(out),
            "--threads",
            str(threads),
            "--repeat",
            str(repeat),
            "--new-tokens",
            str(new_tokens),
            *(["--quick"] if quick else []),
        ]
        proc = subprocess.run(cmd, env=env, timeout=900, text=True, stdout=sys.stdout, stderr=subprocess.PIPE)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"the PyTorch phase failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())
