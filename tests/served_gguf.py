"""The end-to-end flow of a GGUF file served by `ernie-ops serve --engine llamacpp`, shared by both of
its servers' tests (llama.cpp's llama-server: test_llama_server.py; llama-cpp-python's server:
test_serve_llamacpp.py): up detached with an API key, a wrong key refused, chat and the same
answer streamed, `ernie-ops smoke` and `ernie-ops bench` against it, stopped at the end."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
from polling import free_port

KEY_ENV, KEY = "TINY_KEY", "sk-tiny"
MODEL = "tiny"
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}


def fake_gguf(
    path: Path,
    quant: str = "q8_0",
    arch: str = "ernie4_5",
    context: int = 4096,
    shape: tuple[int, int, int, int] | None = None,
) -> Path:
    """A GGUF file with the metadata the engine reads (and one tensor): no model behind it. SHAPE
    (layers, hidden, heads, KV heads) adds what the KV-cache estimate reads."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(context)
    writer.add_file_type(FILE_TYPES[quant])
    if shape is not None:
        layers, hidden, heads, kv_heads = shape
        writer.add_block_count(layers)
        writer.add_embedding_length(hidden)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
    writer.add_chat_template("{{ messages[0]['content'] }}")
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@contextmanager
def served_gguf(
    cli: Callable[..., CompletedProcess], path: Path, cwd: Path, monkeypatch: Any, *sets: str
) -> Iterator[tuple[int, Any, CompletedProcess]]:
    """PATH served detached on a free port (--set SETS too); (port, an OpenAI client with the key,
    the serve command's result). Stopped on the way out, which must say so."""
    import openai

    port = free_port()
    monkeypatch.setenv(KEY_ENV, KEY)  # the readiness probe has no key: it must not need one
    extra = [arg for s in sets for arg in ("--set", s)]
    started = cli(
        "serve", str(path), "--engine", "llamacpp", "--set", f"port={port}",
        "--set", f"served_model_name={MODEL}", "--set", f"api_key_env={KEY_ENV}", *extra, "--detach",
        cwd=cwd, timeout=300,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    assert KEY not in started.stdout + started.stderr
    try:
        url = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong").chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
        yield port, openai.OpenAI(base_url=url, api_key=KEY), started
    finally:
        stopped = cli("serve", "stop", "--port", str(port), cwd=cwd)
    assert stopped.returncode == 0 and f"port {port}: stopped the server" in stopped.stdout


def check_chat_and_stream(client: Any) -> None:
    """A greedy chat completion, then the same request streamed: the same text."""
    assert MODEL in [m.id for m in client.models.list().data]
    messages = [{"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    assert reply.choices[0].finish_reason in ("length", "stop") and reply.usage.completion_tokens <= 4
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=4, temperature=0, stream=True
        )
    )
    assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content  # greedy: the same answer streamed


def check_smoke_and_bench(
    cli: Callable[..., CompletedProcess], port: int, out: Path, prompts: int, concurrency: int
) -> None:
    """`ernie-ops smoke` passes its serving checks and `ernie-ops bench` runs, both with the key."""
    smoke = cli(
        "smoke", f"127.0.0.1:{port}", "--api-key-env", KEY_ENV, "--out", str(out / "smoke"), "--json",
        timeout=300,
    )  # fmt: skip
    report = json.loads(smoke.stdout)
    status = {c["name"]: c["status"] for c in report["checks"]}
    for name in ("models", "chat", "streaming", "max_tokens"):
        assert status[name] == "PASS", (name, smoke.stdout[-3000:], smoke.stderr[-2000:])
    bench = cli(
        "bench", f"127.0.0.1:{port}", "--api-key-env", KEY_ENV, "--num-prompts", str(prompts),
        "--concurrency", str(concurrency), "--out", str(out / "bench"), timeout=300,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
