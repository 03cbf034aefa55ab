"""The llamacpp engine through llama.cpp's own `llama-server` (serve/backends/_llama_server.py).

Everywhere: the command line built for a stand-in binary (slots, the shared context, threads, the
key in the environment only, the AMX rule), the refusals (a bad LLAMA_SERVER, a binary without a
flag the engine passes, a KV cache larger than the memory). With a real llama-server (built by
scripts/build_llama_server.sh; skipped without): the tiny model's GGUF served through
`ernie-ops serve`, chat and streaming, 8 streams decoded together, `ernie-ops smoke` and
`ernie-ops bench`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from served_gguf import check_chat_and_stream, check_smoke_and_bench, fake_gguf, served_gguf

from ernie_ops.errors import UserError
from ernie_ops.serve.profile import profile_for_checkpoint

gguf = pytest.importorskip("gguf", reason="the `gguf` extra (llama.cpp's gguf package) is not installed")

from ernie_ops.serve.backends import _llama_server, _llamacpp_server, llamacpp  # noqa: E402

FAKE_HELP = "\n".join(f"{flag}  something" for flag in _llama_server.FLAGS)


def _real_binary() -> str | None:
    before = os.environ.pop(_llama_server.BINARY_ENV, None)
    try:
        return _llama_server.find()
    except UserError:
        return None
    finally:
        if before is not None:
            os.environ[_llama_server.BINARY_ENV] = before


REAL = _real_binary()
needs_binary = pytest.mark.skipif(
    REAL is None, reason="llama-server is not installed (scripts/build_llama_server.sh builds it)"
)


def fake_binary(tmp_path: Path, help_text: str = FAKE_HELP, amx: bool = False) -> Path:
    """An executable answering --help and --version like llama-server (optionally with the AMX
    buffer type's name inside, as a binary with the AMX kernels has)."""
    path = tmp_path / "llama-server"
    marker = "\n# \0AMX\0\n" if amx else ""
    path.write_bytes(
        (
            "#!/bin/sh\n"
            'if [ "$1" = --version ]; then echo "version: 1 (abc123)" >&2; exit 0; fi\n'
            f"cat <<'EOF'\n{help_text}\nEOF\nexit 0\n"
        ).encode()
        + marker.encode()
    )
    path.chmod(0o755)
    return path


def tiny_gguf_metadata(path: Path, context: int = 4096) -> Path:
    """q4_0 metadata at the 0.3B shape (18 layers, hidden 1024, 16 heads, 2 KV heads)."""
    return fake_gguf(path, "q4_0", context=context, shape=(18, 1024, 16, 2))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    binary = fake_binary(tmp_path)
    monkeypatch.setenv(_llama_server.BINARY_ENV, str(binary))
    monkeypatch.delenv(_llamacpp_server.ENV, raising=False)
    return binary


def test_the_command_slots_shared_context_threads_and_the_key_in_the_environment(tmp_path, fake, monkeypatch):
    model = tiny_gguf_metadata(tmp_path / "m.gguf", context=1024)
    monkeypatch.setenv("MY_KEY", "sk-secret")
    monkeypatch.setenv(llamacpp.THREADS_ENV, "3")
    profile = profile_for_checkpoint(
        str(model),
        [
            "served_model_name=ernie",
            "api_key_env=MY_KEY",
            "max_model_len=4096",
            "max_num_seqs=8",
            "port=8301",
        ],
    )
    backend = llamacpp.BACKEND
    launch = backend.command(profile, backend.resolve(profile))
    argv = launch.argv

    def flag(name):
        return argv[argv.index(name) + 1]

    assert argv[0] == str(fake) and flag("--model") == str(model.resolve())
    assert flag("--host") == "127.0.0.1" and flag("--port") == "8301"
    assert flag("--parallel") == "8"
    assert flag("--ctx-size") == str(8 * 1024)  # each slot: max_model_len capped at the model's 1024
    assert flag("--threads") == flag("--threads-batch") == "3"
    assert {"--cont-batching", "--jinja", "--metrics"} <= set(argv) and flag("--alias") == "ernie"
    assert "--no-repack" not in argv
    assert "sk-secret" not in " ".join(argv)
    assert launch.env == {"LLAMA_API_KEY": "sk-secret", "GOMP_SPINCOUNT": _llama_server.SPIN_COUNT}
    assert backend.health_path == "/health" and backend.api_key_env == "LLAMA_API_KEY"
    assert set(argv) >= {f for f in _llama_server.FLAGS if f not in ("--no-repack",)}
    shown = backend.command(profile).shown()  # --print-command: no key read, the model as given
    assert shown.startswith(f"GOMP_SPINCOUNT=10000 {fake}") and "LLAMA_API_KEY" not in shown


def test_the_openmp_spin_default_yields_to_the_users_own(tmp_path, fake, monkeypatch):
    """GOMP_SPINCOUNT=10000 for llama-server's OpenMP threads unless the environment already says how
    they wait (either variable); llama-cpp-python's server is left alone."""
    model = tiny_gguf_metadata(tmp_path / "m.gguf")
    profile = profile_for_checkpoint(str(model), ["port=8301"])
    for name in _llama_server.WAIT_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert llamacpp.BACKEND.command(profile).env == {"GOMP_SPINCOUNT": "10000"}
    assert "GOMP_SPINCOUNT=10000 " in llamacpp.BACKEND.command(profile).shown()
    for name, value in (("OMP_WAIT_POLICY", "active"), ("GOMP_SPINCOUNT", "300000")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            assert llamacpp.BACKEND.command(profile).env == {}
    monkeypatch.setenv(_llama_server.BINARY_ENV, "off")
    assert llamacpp.BACKEND.command(profile, python="python").env == {}


def test_llama_server_off_or_absent_falls_back_to_llama_cpp_python(tmp_path, monkeypatch):
    model = tiny_gguf_metadata(tmp_path / "m.gguf")
    profile = profile_for_checkpoint(str(model), ["port=8301"])
    monkeypatch.setenv(_llama_server.BINARY_ENV, "off")
    argv = llamacpp.BACKEND.command(profile, python="python").argv
    assert argv[:3] == ["python", "-m", llamacpp.MODULE] and "--parallel" not in argv
    assert llamacpp.BACKEND.health_path == "/openapi.json" and llamacpp.BACKEND.api_key_env == "API_KEY"
    monkeypatch.delenv(_llama_server.BINARY_ENV)
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-server on PATH
    monkeypatch.setattr(_llama_server.sys, "executable", str(tmp_path / "python"))  # nor beside Python
    assert _llama_server.find() is None


def test_a_bad_llama_server_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(_llama_server.BINARY_ENV, str(tmp_path / "nowhere" / "llama-server"))
    with pytest.raises(UserError, match=r"LLAMA_SERVER=.*no executable file") as err:
        _llama_server.find()
    assert "LLAMA_SERVER=off" in (err.value.hint or "")
    why = llamacpp.BACKEND.unavailable()
    assert why and "no executable file" in why


def test_a_binary_without_a_flag_the_engine_passes_is_refused(tmp_path, monkeypatch):
    binary = fake_binary(tmp_path, FAKE_HELP.replace("--parallel", "--other"))
    with pytest.raises(UserError, match=r"does not take --parallel") as err:
        _llama_server.check_flags(str(binary))
    assert "build_llama_server.sh" in (err.value.hint or "")
    _llama_server.check_flags(str(fake_binary(tmp_path)))  # all there: accepted


def test_extra_buffers_off_only_where_the_cpu_and_the_binary_have_amx(tmp_path, monkeypatch):
    monkeypatch.delenv(_llamacpp_server.ENV, raising=False)
    (tmp_path / "plain").mkdir()
    (tmp_path / "amx").mkdir()
    plain = fake_binary(tmp_path / "plain")
    amx = fake_binary(tmp_path / "amx", amx=True)
    monkeypatch.setattr(_llamacpp_server, "cpu_has_amx", lambda: True)
    assert _llama_server.repack(str(plain)) and not _llama_server.repack(str(amx))
    monkeypatch.setattr(_llamacpp_server, "cpu_has_amx", lambda: False)
    assert _llama_server.repack(str(amx))
    monkeypatch.setenv(_llamacpp_server.ENV, "0")
    assert not _llama_server.repack(str(plain))
    args = _llama_server.argv(
        str(plain), "m.gguf", "127.0.0.1", 1, slots=1, slot_context=8, threads=1, alias=None, repack=False
    )
    assert args[-1] == "--no-repack"


def test_preflight_names_the_server_and_refuses_a_kv_cache_beyond_memory(tmp_path, fake, monkeypatch):
    import psutil

    model = tiny_gguf_metadata(tmp_path / "m.gguf", context=131072)
    backend = llamacpp.BACKEND

    def preflight(*sets):
        profile = profile_for_checkpoint(str(model), ["port=8302", *sets])
        return backend.preflight(profile, backend.resolve(profile))

    lines = preflight("max_model_len=4096", "max_num_seqs=8")
    assert "llama-server" in lines[0] and "8 slot(s) of context 4096 (--ctx-size 32768" in lines[0]
    assert "continuous batching" in lines[0]
    # 18 layers x 2 KV heads x 64 dims x K,V x f16 = 9 KiB a token: 8 x 4096 tokens = 288 MiB
    assert "KV cache 288 MiB" in lines[0]
    monkeypatch.setenv("LLAMA_ARG_CTX_SIZE", "8")
    assert any("LLAMA_ARG_CTX_SIZE" in line for line in preflight("max_model_len=4096", "max_num_seqs=8"))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": 2**28})())
    with pytest.raises(UserError, match=r"KV cache for 8 slot\(s\) of 4096 tokens would take") as err:
        preflight("max_model_len=4096", "max_num_seqs=8")
    assert "max_num_seqs" in (err.value.hint or "")


# ---------------------------------------------------------------------------------------------
# the real llama-server


@needs_binary
def test_the_installed_binary_takes_every_flag_the_engine_passes():
    assert REAL is not None
    _llama_server.check_flags(REAL)
    assert _llama_server.version(REAL) != "unknown version"


@needs_binary
@pytest.mark.slow
def test_serve_chat_stream_eight_concurrent_streams_and_smoke(tiny_gguf, cli, tmp_path, monkeypatch):
    assert REAL is not None
    monkeypatch.setenv(_llama_server.BINARY_ENV, REAL)
    sets = ("max_num_seqs=8", "max_model_len=2048")
    with served_gguf(cli, tiny_gguf, tmp_path, monkeypatch, *sets) as (port, client, started):
        assert "llama-server" in started.stdout and "continuous batching" in started.stdout
        check_chat_and_stream(client)

        # 8 streams at once: served together, every stream's first token comes before any
        # stream's last (served one at a time, the 2nd would start after the 1st ended). 2000
        # tokens each, so a thread started late on a busy machine still overlaps the others
        # (400 tokens, ~0.2 s a stream, failed once at load 4)
        spans: list[tuple[float, float]] = []
        barrier = threading.Barrier(8)

        def stream(i: int) -> None:
            barrier.wait()
            first = last = 0.0
            for chunk in client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"Story {i}"}], max_tokens=2000,
                temperature=0, stream=True, extra_body={"ignore_eos": True},
            ):  # fmt: skip
                if chunk.choices and chunk.choices[0].delta.content:
                    last = time.monotonic()
                    first = first or last
            spans.append((first, last))

        workers = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=300)
        assert len(spans) == 8 and all(first for first, _ in spans), spans
        assert max(first for first, _ in spans) < min(last for _, last in spans), spans

        check_smoke_and_bench(cli, port, tmp_path, prompts=8, concurrency=8)


def _bench_serve_cpu():
    from ernie_ops.benchmark import script

    return script("bench_serve_cpu")


@needs_binary
def test_bench_reads_llama_cpps_own_benchmarks(tiny_gguf):
    """bench_serve_cpu's "llama.cpp own" figures come from llama-bench / llama-batched-bench run on
    the file (their JSON parsed), when the build script installed them beside llama-server."""
    bench = _bench_serve_cpu()
    binaries = bench.own_benchmarks()
    if binaries is None:
        pytest.skip(
            "llama-bench / llama-batched-bench not beside llama-server (scripts/build_llama_server.sh)"
        )
    assert set(binaries) == {"llama-bench", "llama-batched-bench"}
    res = bench.own_phase(binaries, tiny_gguf, 1, 4)
    assert res["own"] == "llama-bench / llama-batched-bench"
    assert res["b1_decode_tok_s"] > 0 and res["b8_e2e_tok_s"] > 0 and 0 < res["b1_ttft_s"] < 60
    row = res["llama_batched_bench"]  # BATCH sequences, the first token from the prefill
    assert (row["pl"], row["pp"], row["tg"]) == (bench.BATCH, bench.PROMPT_LEN, 3)
    assert res["b8_e2e_tok_s"] == pytest.approx(bench.BATCH * 4 / row["t"])
    assert len(res["llama_bench"]["tg"]) == 1  # one repetition a round


def test_bench_finds_no_own_benchmarks_without_llama_server(monkeypatch):
    monkeypatch.setenv(_llama_server.BINARY_ENV, "off")
    assert _bench_serve_cpu().own_benchmarks() is None


def test_bench_thread_list_refuses_nonsense():
    import argparse

    bench = _bench_serve_cpu()
    assert bench.thread_list("1,2,1") == [1, 2]
    for bad in ("", "0", "a,2", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="thread counts"):
            bench.thread_list(bad)
