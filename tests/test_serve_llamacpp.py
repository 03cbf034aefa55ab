"""The `llamacpp` engine (serve/backends/llamacpp.py): GGUF files served by llama-cpp-python's
server (LLAMA_SERVER=off here; llama.cpp's own llama-server: tests/test_llama_server.py).

Without llama-cpp-python: the registry, resolution (file, directory, run exports by quantization,
refusals with the export command), the command line, pre-flight and the profile rules, on small
GGUF files written with the gguf package. With it: the tiny model's GGUF served through
`ernie-ops serve --engine llamacpp --detach`, a chat completion and a streamed one with the OpenAI
client, `ernie-ops smoke` and `ernie-ops bench` unchanged, status and stop.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from served_gguf import check_chat_and_stream, check_smoke_and_bench, fake_gguf, served_gguf

from ernie_ops.errors import UserError
from ernie_ops.serve.backends import all_backends, choose, get
from ernie_ops.serve.profile import load_profile, profile_for_checkpoint

gguf = pytest.importorskip("gguf", reason="the `gguf` extra (llama.cpp's gguf package) is not installed")

from ernie_ops.serve.backends import llamacpp  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "recipes" / "serve" / "cpu" / "ERNIE-4.5-0.3B_q4_0_cpu_llamacpp.yaml"
NO_LLAMA_CPP = (
    "llama-cpp-python is not installed (the `llamacpp` extra: pip install 'llama-cpp-python[server]')"
)


def _python_server_unavailable() -> str | None:
    """Why llama-cpp-python's server cannot run (llama-server, if installed, not counted)."""
    before = os.environ.get("LLAMA_SERVER")
    os.environ["LLAMA_SERVER"] = "off"
    try:
        return llamacpp.BACKEND.unavailable()
    finally:
        if before is None:
            del os.environ["LLAMA_SERVER"]
        else:
            os.environ["LLAMA_SERVER"] = before


needs_llama_cpp = pytest.mark.skipif(
    _python_server_unavailable() is not None, reason=_python_server_unavailable() or NO_LLAMA_CPP
)


@pytest.fixture(autouse=True)
def llama_cpp_python_server(monkeypatch):
    """These tests are of llama-cpp-python's server, even where llama-server is installed."""
    monkeypatch.setenv("LLAMA_SERVER", "off")


def test_registered_but_never_the_default():
    assert "llamacpp" in [b.name for b in all_backends()]
    backend, _ = choose(None)
    assert backend.name != "llamacpp"
    assert get("llamacpp") is llamacpp.BACKEND


def test_unavailable_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    why = llamacpp.BACKEND.unavailable()
    assert why and "llama-cpp-python" in why and "llamacpp" in why


def test_resolves_a_file_a_directory_and_a_run(tmp_path):
    from ernie_ops.train.record import RunRecord

    backend = llamacpp.BACKEND
    q8 = fake_gguf(tmp_path / "m-q8_0.gguf", "q8_0")
    assert backend.resolve(profile_for_checkpoint(str(q8))).model_dir == q8.resolve()
    models = tmp_path / "models"
    models.mkdir()
    fake_gguf(models / "a.gguf", "q8_0")
    q4 = fake_gguf(models / "b.gguf", "q4_0")
    assert (
        backend.resolve(profile_for_checkpoint(str(models), ["quantization=q4_0"])).model_dir == q4.resolve()
    )
    with pytest.raises(UserError, match="2 GGUF file"):
        backend.resolve(profile_for_checkpoint(str(models)))

    run = tmp_path / "run"
    run.mkdir()
    record = RunRecord(name="run", run_dir=str(run), recipe_source="recipe.yaml", status="succeeded")
    record.exports["gguf"] = {"q8_0": {"path": str(q8)}, "q4_0": {"path": str(q4)}}
    record.save()
    target = backend.resolve(profile_for_checkpoint(str(run), ["quantization=q8_0"]))
    assert target.model_dir == q8.resolve() and target.run_dir == run
    with pytest.raises(UserError, match="has no GGUF export in f16") as err:
        backend.resolve(profile_for_checkpoint(str(run), ["quantization=f16"]))
    assert "--format gguf --quant f16" in (err.value.hint or "")


def test_a_checkpoint_or_another_file_is_refused_with_the_export_command(tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    with pytest.raises(UserError, match="checkpoint without a GGUF file") as err:
        llamacpp.BACKEND.resolve(profile_for_checkpoint(str(checkpoint)))
    assert f"ernie-ops export {checkpoint} --format gguf" in (err.value.hint or "")
    other = tmp_path / "model.bin"
    other.write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match="not a GGUF file"):
        llamacpp.BACKEND.resolve(profile_for_checkpoint(str(other)))


def test_command_threads_context_alias_and_the_key_kept_out_of_argv(tmp_path, monkeypatch):
    backend = llamacpp.BACKEND
    path = fake_gguf(tmp_path / "m.gguf", "q4_0", context=1024)
    monkeypatch.setenv("MY_KEY", "sk-secret")
    profile = profile_for_checkpoint(
        str(path), ["served_model_name=ernie", "api_key_env=MY_KEY", "max_model_len=32768", "port=8301"]
    )
    profile.host = "127.0.0.1"
    monkeypatch.setenv(llamacpp.THREADS_ENV, "3")
    launch = backend.command(profile, backend.resolve(profile), python="python")
    argv = launch.argv
    assert argv[:3] == ["python", "-m", "ernie_ops.serve.backends._llamacpp_server"]

    def flag(name):
        return argv[argv.index(name) + 1]

    assert flag("--model") == str(path.resolve()) and flag("--port") == "8301"
    assert flag("--n_ctx") == "1024"  # capped at the model's context
    assert flag("--n_threads") == flag("--n_threads_batch") == "3"
    assert flag("--interrupt_requests") == "False" and flag("--logits_all") == "False"
    assert flag("--model_alias") == "ernie"
    assert "sk-secret" not in " ".join(argv) and launch.env == {"API_KEY": "sk-secret"}
    monkeypatch.delenv(llamacpp.THREADS_ENV)
    assert flag("--n_threads") == "3"
    assert llamacpp.threads() == max(llamacpp.physical_cores() - 1, 1)  # a core left to the server
    monkeypatch.setenv(llamacpp.THREADS_ENV, "many")
    with pytest.raises(UserError, match="not a thread count"):
        llamacpp.threads()


def test_preflight_refuses_a_type_mismatch_another_model_and_a_template_file(tmp_path, monkeypatch):
    backend = llamacpp.BACKEND
    monkeypatch.setattr(llamacpp.LlamaCpp, "unavailable", lambda self: None)
    path = fake_gguf(tmp_path / "m.gguf", "q8_0")

    def preflight(*sets):
        profile = profile_for_checkpoint(str(path), ["port=8302", *sets])
        return backend.preflight(profile, backend.resolve(profile))

    assert "thread" in preflight()[0]
    with pytest.raises(UserError, match="q8_0, the profile says quantization: q4_0"):
        preflight("quantization=q4_0")
    with pytest.raises(UserError, match="chat template inside the GGUF"):
        preflight(f"chat_template={tmp_path / 't.jinja'}")
    llama = fake_gguf(tmp_path / "llama.gguf", "q8_0", arch="llama")
    profile = profile_for_checkpoint(str(llama), ["port=8302"])
    with pytest.raises(UserError, match=r"not ERNIE 4\.5"):
        backend.preflight(profile, backend.resolve(profile))


def test_profile_rules_for_gguf_types(tmp_path):
    def write(text):
        path = tmp_path / "p.yaml"
        path.write_text(text)
        return path

    with pytest.raises(UserError, match="only engine: llamacpp serves GGUF"):
        load_profile(write("model: /m\nengine: vllm\nquantization: q4_0\n"))
    with pytest.raises(UserError, match="not a GGUF type the llamacpp engine serves"):
        load_profile(write("model: /m\nengine: llamacpp\nquantization: wint4\n"))
    assert load_profile(write("model: /m\nengine: llamacpp\n")).quantization == "bf16"  # the file's type
    assert (
        load_profile(write("model: /m.gguf\nquantization: q8_0\n")).quantization == "q8_0"
    )  # --engine later


def test_the_shipped_cpu_profile(capsys):
    from ernie_ops.cli.main import main

    profile = load_profile(PROFILE)
    assert profile.engine == "llamacpp" and profile.quantization == "q4_0" and profile.host == "127.0.0.1"
    assert main(["serve", str(PROFILE), "--print-command"]) == 0
    out = capsys.readouterr().out
    assert "-m ernie_ops.serve.backends._llamacpp_server" in out and "--n_ctx 4096" in out
    assert f"ernie-ops serve {PROFILE.relative_to(REPO)}" in PROFILE.read_text()


@needs_llama_cpp
def test_the_server_ignores_settings_from_the_environment(monkeypatch):
    from ernie_ops.serve.backends import _llamacpp_server

    for name, value in (
        ("N_CTX", "8"),
        ("chat_format", "chatml"),
        ("CONFIG_FILE", "x.yaml"),
        ("API_KEY", "k"),
    ):
        monkeypatch.setenv(name, value)
    assert sorted(_llamacpp_server.scrub_environment()) == ["CONFIG_FILE", "N_CTX", "chat_format"]
    assert os.environ["API_KEY"] == "k" and "N_CTX" not in os.environ


# ---------------------------------------------------------------------------------------------
# the real server


@needs_llama_cpp
@pytest.mark.slow
def test_serve_chat_stream_smoke_and_bench_through_llama_cpp(tiny_gguf, cli, tmp_path, monkeypatch):
    with served_gguf(cli, tiny_gguf, tmp_path, monkeypatch) as (port, client, started):
        assert "_llamacpp_server" in started.stdout
        assert [m.id for m in client.models.list().data] == ["tiny"]
        check_chat_and_stream(client)
        check_smoke_and_bench(cli, port, tmp_path, prompts=4, concurrency=2)
        status_out = json.loads(cli("serve", "status", "--json", cwd=tmp_path).stdout)
        assert [(s["port"], s["state"]) for s in status_out] == [(port, "ready")]
