"""Serve profiles, the FastDeploy command builder per version, and the pre-flight checks.

FastDeploy cannot run here (GPU only); everything before its process starts is tested for real."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from polling import free_port

from ernie_ops.cli.main import main
from ernie_ops.errors import UserError
from ernie_ops.serve.detached import free_port_block
from ernie_ops.serve.fastdeploy import VERSIONS, build_launch, check_command, dialect, flag_table
from ernie_ops.serve.preflight import check_ports, resolve_model
from ernie_ops.serve.profile import load_profile

PROFILES = sorted((Path(__file__).parent.parent / "recipes" / "serve").glob("*.yaml"))
FD_PROFILES = [p for p in PROFILES if not p.stem.endswith("_vllm")]  # the vLLM ones: tests/test_vllm.py


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", FD_PROFILES, ids=lambda p: p.stem)
def test_every_shipped_profile_builds_a_valid_command_for_its_version(path):
    profile = load_profile(path)
    launch = build_launch(profile, Path("/models/x"), is_vl="-VL-" in path.stem)
    table = flag_table(dialect(profile.fastdeploy_version).version)
    flags = [a for a in launch.argv[3:] if a.startswith("--")]
    assert all(f in table or f.replace("--no-", "--") in table for f in flags)
    assert launch.argv[1:3] == ["-m", "fastdeploy.entrypoints.openai.api_server"]
    assert (
        "exact FastDeploy command" in path.read_text()
        and f"ernie-ops serve {path.relative_to(path.parents[2])}" in path.read_text()
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_each_dialect_builds_or_says_which_parser_it_lacks(version, tmp_path):
    for path in PROFILES:
        profile = load_profile(path, [f"fastdeploy_version={version}"])
        try:
            build_launch(profile, Path("/m"), is_vl="-VL-" in path.stem)
        except UserError as err:
            assert "parser" in str(err) and f"FastDeploy {version}" in str(err), err


def test_dialect_differences(tmp_path):
    vl = write(tmp_path, "model: /m\nreasoning_parser: ernie-45-vl\nfastdeploy_version: '2.0'\n")
    assert "--enable-mm" in build_launch(load_profile(vl), Path("/m"), is_vl=True).argv
    assert (
        "--enable-mm" not in build_launch(load_profile(vl, ["fastdeploy_version=2.1"]), Path("/m"), True).argv
    )
    x1 = write(tmp_path, "model: /m\nreasoning_parser: ernie-x1\n", "x1.yaml")
    argv = build_launch(load_profile(x1, ["fastdeploy_version=2.1"]), Path("/m")).argv
    assert argv[argv.index("--reasoning-parser") + 1] == "ernie_x1"
    argv = build_launch(load_profile(x1, ["fastdeploy_version=2.3"]), Path("/m")).argv
    assert argv[argv.index("--reasoning-parser") + 1] == "ernie-x1"
    with pytest.raises(UserError, match=r"--load-choices does not exist in FastDeploy 2\.2"):
        check_command(["--load-choices", "default_v1"], "2.2")
    off = write(tmp_path, "model: /m\nenable_prefix_caching: false\n", "off.yaml")
    assert "--no-enable-prefix-caching" in build_launch(load_profile(off), Path("/m")).argv
    assert (
        "--enable-prefix-caching"
        not in build_launch(load_profile(off, ["fastdeploy_version=2.1"]), Path("/m")).argv
    )


def test_flag_values_are_type_checked():
    with pytest.raises(UserError, match="not an int"):
        check_command(["--max-num-seqs", "lots"], "2.5")
    with pytest.raises(UserError, match="not JSON"):
        check_command(["--mm-processor-kwargs", "{video_fps: 2"], "2.5")
    with pytest.raises(UserError, match="does not exist"):
        check_command(["--max-sequences", "8"], "2.5")


@pytest.mark.parametrize(
    "body, line, text",
    [
        ("model: /m\nmm_processor_kwargs:\n  video_fps: 1.5\n", 2, "would silently drop ALL the kwargs"),
        ("model: /m\nmm_processor_kwargs: {image_max_pixel: 100}\n", 2, "did you mean 'image_max_pixels'"),
        ("model: /m\nquantization: wint3\n", 2, "is not a FastDeploy quantization"),
        ("model: /m\ngpus: [0, 1, 2]\ntensor_parallel_size: 2\n", 3, "does not divide the 3 GPU(s)"),
        ("model: /m\nport: 8180\nmetrics_port: 8180\n", 3, "FastDeploy needs four different ports"),
        ("model: /m\nmax_num_seq: 64\n", 2, "did you mean 'max_num_seqs'"),
        ("model: /m\nmax_model_len: '32k'\n", 2, "expected int"),
        ("model: /m\nlimit_mm_per_prompt: {images: 4}\n", 2, "expected one of image, video, audio"),
    ],
)
def test_bad_profiles_are_rejected_with_file_and_line(tmp_path, body, line, text):
    path = write(tmp_path, body)
    with pytest.raises(UserError) as err:
        load_profile(path)
    assert f"{path}:{line}:" in str(err.value) and text in str(err.value)


def test_the_api_key_never_reaches_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_FD_KEY", "sk-very-secret")
    launch = build_launch(load_profile(write(tmp_path, "model: /m\napi_key_env: MY_FD_KEY\n")), Path("/m"))
    assert launch.env["FD_API_KEY"] == "sk-very-secret"
    assert "sk-very-secret" not in " ".join(launch.argv) and "sk-very-secret" not in launch.shown()
    monkeypatch.delenv("MY_FD_KEY")
    with pytest.raises(UserError, match="MY_FD_KEY is not set"):
        build_launch(load_profile(write(tmp_path, "model: /m\napi_key_env: MY_FD_KEY\n")), Path("/m"))


def test_print_command_cli(capsys):
    assert main(["serve", str(PROFILES[0]), "--print-command", "--set", "port=8380"]) == 0
    out = capsys.readouterr().out
    assert "--port 8380" in out and "--metrics-port 8381" in out


# ------------------------------------------------------------------------------------ pre-flight


def test_a_lora_run_is_refused_until_exported(tmp_path):
    from ernie_ops.train.record import RunRecord

    RunRecord(
        name="r", run_dir=str(tmp_path), recipe_source="x", status="succeeded", fine_tuning="LoRA"
    ).save()
    with pytest.raises(UserError) as err:
        resolve_model(str(tmp_path))
    assert "LoRA" in err.value.message and "ernie-ops export" in err.value.hint


def test_a_hub_id_that_is_not_local_is_refused_before_fastdeploy_downloads(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        resolve_model("baidu/ERNIE-4.5-0.3B-Paddle")
    assert "download" in err.value.message and err.value.hint == "ernie-ops pull baidu/ERNIE-4.5-0.3B-Paddle"


def test_the_tiny_checkpoint_resolves_and_is_not_a_catalog_model(tiny_dense):
    target = resolve_model(str(tiny_dense))
    assert target.model_dir == tiny_dense.resolve() and target.spec is None and not target.is_moe


def test_ports_in_use_and_low_byte_collisions_are_refused(tmp_path):
    port = free_port_block(4)
    profile = load_profile(write(tmp_path, f"model: /m\nport: {port}\n"))
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", port + 1))
        busy.listen()
        with pytest.raises(UserError, match=f"metrics_port {port + 1} is already in use"):
            check_ports(profile, tmp_path / "state")
    state = tmp_path / "state"
    state.mkdir()
    other = {"port": 20000, "command": ["python", "--engine-worker-queue-port", str(port + 2 + 256)]}
    (state / "20000.json").write_text(json.dumps(other))
    with pytest.raises(UserError, match="low byte"):
        check_ports(profile, state)


def test_serving_here_stops_at_the_missing_gpu_after_verifying(tiny_dense, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    port = free_port_block(4)
    assert main(["serve", str(tiny_dense), "--backend", "fastdeploy", "--set", f"port={port}"]) == 2
    assert "no GPU visible" in capsys.readouterr().err


@pytest.mark.gpu
def test_real_fastdeploy_serves_ernie_0_3b(cli, tmp_path):
    """On a GPU node with fastdeploy-gpu installed: pull ERNIE-4.5-0.3B, serve it detached, ask it
    something over the OpenAI API, stop it. Skipped where no GPU is visible."""
    import httpx

    model = tmp_path / "ERNIE-4.5-0.3B-Paddle"
    pulled = cli("pull", "baidu/ERNIE-4.5-0.3B-Paddle", "--local-dir", str(model), timeout=3600)
    assert pulled.returncode == 0, pulled.stderr
    port = free_port_block(4)  # FastDeploy takes the port and the three after it
    started = cli(
        "serve",
        str(model),
        "--set",
        f"port={port}",
        "--set",
        "max_model_len=4096",
        "--detach",
        cwd=tmp_path,
        timeout=1800,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            timeout=120,
            json={
                "model": "default",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 16,
            },
        )
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    finally:
        assert cli("serve", "stop", "--port", str(port), cwd=tmp_path).returncode == 0


# No GPU here: the GPU pre-flight runs on a simulated nvidia-smi inventory.
def test_gpu_preflight_asks_the_planner(monkeypatch, tmp_path):
    from ernie_ops.catalog import MODELS
    from ernie_ops.serve import preflight
    from ernie_ops.serve.preflight import Target, check_gpus

    monkeypatch.setattr(preflight, "gpu_inventory", lambda: [(0, "NVIDIA H800", 79.6)])
    target = Target(Path("/m"), MODELS["ERNIE-4.5-21B-A3B"], is_vl=False, is_moe=True)
    fits = load_profile(write(tmp_path, "model: /m\nquantization: wint4\nmax_num_seqs: 8\n"))
    assert "FITS" in (check_gpus(fits, target) or "")
    too_big = load_profile(
        write(tmp_path, "model: /m\nquantization: bf16\nmax_model_len: 131072\nmax_num_seqs: 256\n")
    )
    with pytest.raises(UserError, match="does not fit"):
        check_gpus(too_big, target)
    elsewhere = load_profile(write(tmp_path, "model: /m\ngpus: [3]\n"))
    with pytest.raises(UserError, match=r"gpus \[3\] are not visible"):
        check_gpus(elsewhere, target)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_shipped_profile_fits_the_gpu_it_is_sized_for(path):
    from ernie_ops.catalog import find_model
    from ernie_ops.serve.planner import plan_serve

    profile = load_profile(path)
    plan = plan_serve(
        find_model(profile.model),
        profile.ernie_ops["gpu"],
        gpus=len(profile.gpus),
        quantization=profile.quantization,
        max_model_len=profile.max_model_len,
        max_num_seqs=profile.max_num_seqs,
        gpu_memory_utilization=profile.gpu_memory_utilization,
        tensor_parallel=profile.tensor_parallel_size,
        engine="vllm" if profile.engine == "vllm" else "fastdeploy",  # whose memory model
    )
    assert plan.fits, plan.explain()


# No GPU and no FastDeploy here: with a simulated GPU inventory the whole path runs for real up to the
# FastDeploy process, which fails to start; the supervisor must say why at once.
def serve_fastdeploy_on_a_fake_gpu(model: Path, monkeypatch, tmp_path: Path) -> int:
    """`ernie-ops serve MODEL --backend fastdeploy` in TMP_PATH as if an H800 were here: its exit
    status (1: FastDeploy is not installed here, so it does not start)."""
    from ernie_ops.serve import preflight

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(preflight, "gpu_inventory", lambda: [(0, "NVIDIA H800", 79.6)])
    port = free_port_block(4)  # FastDeploy takes the port and the three after it
    return main(
        ["serve", str(model), "--backend", "fastdeploy", "--port", str(port), "--set", "startup_timeout=60"]
    )


def test_serve_without_fastdeploy_installed_fails_fast_with_the_reason(
    tiny_dense, monkeypatch, capsys, tmp_path
):
    assert serve_fastdeploy_on_a_fake_gpu(tiny_dense, monkeypatch, tmp_path) == 1
    out = capsys.readouterr()
    assert "FastDeploy is not installed" in out.out + out.err
    assert (tmp_path / "runs" / "serve").is_dir()


def test_without_gpu_the_embedded_backend_serves_with_the_same_lifecycle(tiny_dense, cli, tmp_path):
    """No GPU here: `serve` picks the embedded CPU server, says so, and status/stop manage it."""
    import openai

    port = free_port()
    started = cli("serve", str(tiny_dense), "--set", f"port={port}", "--detach", cwd=tmp_path, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "embedded CPU backend" in started.stdout
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model=tiny_dense.name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
        )
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4
        status = json.loads(cli("serve", "status", "--json", cwd=tmp_path).stdout)
        assert [(s["port"], s["state"]) for s in status] == [(port, "ready")]
    finally:
        stopped = cli("serve", "stop", "--port", str(port), cwd=tmp_path)
    assert stopped.returncode == 0 and f"port {port}: stopped the server" in stopped.stdout
    assert "no server" in cli("serve", "status", cwd=tmp_path).stdout
