"""The shell entry points parse, fail clearly, and CI runs the README's test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def _scripts(repo):
    return [*sorted((repo / "scripts").glob("*.sh")), repo / ".ci" / "run"]


def test_every_script_parses(repo):
    for script in _scripts(repo):
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_ci_runs_exactly_the_readme_test_command(repo):
    readme = (repo / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert "scripts/test.sh" in blocks[1].split(), "the README's second command is the test command"
    assert "exec scripts/test.sh" in (repo / ".ci" / "run").read_text()


def test_setup_gpu_without_its_indexes_stops_before_installing(repo, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PADDLE_INDEX", "FASTDEPLOY_INDEX")}
    env["VENV"] = str(tmp_path / "venv")
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "setup_gpu.sh")], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 2
    assert "PADDLE_INDEX" in result.stderr and "FASTDEPLOY_INDEX" in result.stderr
    assert not (tmp_path / "venv").exists(), "nothing may be installed when the inputs are missing"


def test_setup_with_a_missing_interpreter_fails_clearly(repo, tmp_path):
    env = {**os.environ, "PYTHON": "python-that-does-not-exist", "VENV": str(tmp_path / "venv")}
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "setup.sh")], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 2
    assert "no Python interpreter 'python-that-does-not-exist'" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_train_scripts_explain_themselves(repo):
    for name in ("train.sh", "train_multinode.sh"):
        script = str(repo / "scripts" / name)
        result = subprocess.run(["bash", script, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "RECIPE.yaml" in result.stdout
        result = subprocess.run(["bash", script], capture_output=True, text=True)
        assert result.returncode == 2 and "RECIPE.yaml" in result.stderr


def test_multinode_script_checks_its_environment_first(repo):
    env = {k: v for k, v in os.environ.items() if k not in ("NNODES", "MASTER")}
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "train_multinode.sh"), "x.yaml"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2 and "NNODES MASTER" in result.stderr
    env.update(NNODES="1", MASTER="10.0.0.1:8080")
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "train_multinode.sh"), "x.yaml"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2 and "2 or more" in result.stderr


def test_chaos_script_explains_itself_and_classifies_every_attempt(repo, tmp_path):
    """scripts/chaos.py (issue #14): --help with examples, and its cheapest area in --quick mode is
    clean, prints the table and writes one classified record per attempt."""
    import json
    import sys

    script = str(repo / "scripts" / "chaos.py")
    result = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--only" in result.stdout and "examples:" in result.stdout
    result = subprocess.run(
        [sys.executable, script, "--only", "files", "--quick", "--seed", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]  # every attack clean
    assert re.search(r"area\s+tried\s+clean\s+wrong\s+traceback\s+hang\s+lost", result.stdout)
    report = json.loads((tmp_path / "chaos.json").read_text())
    assert report["seed"] == 1 and report["areas"] == ["files"] and len(report["attempts"]) >= 10
    for attempt in report["attempts"]:
        assert attempt["area"] == "files" and attempt["name"] and attempt["command"]
        assert attempt["outcome"] in ("clean", "wrong", "traceback", "hang", "lost")
        assert isinstance(attempt["seconds"], float) and isinstance(attempt["detail"], str)
        if attempt["outcome"] != "clean":
            assert attempt["detail"], attempt
    assert (result.returncode == 0) == all(a["outcome"] == "clean" for a in report["attempts"])
    temp = re.search(r"temp (\S+)", result.stdout)
    assert temp and not os.path.exists(temp.group(1)), "its temporary directory is removed at the end"


def test_bench_serve_cpu_finds_its_parts_from_any_directory(repo, tmp_path):
    """Its modules live in scripts/servebench/, found beside the script whatever the working directory;
    a bad option is refused by the parser, before any model is built."""
    script = [sys.executable, str(repo / "scripts" / "bench_serve_cpu.py")]
    result = subprocess.run([*script, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--part {compare,paired,decode-step,engine-detail,server-overhead,llamacpp-serve}" in result.stdout
    bad = subprocess.run(
        [*script, "--contenders", "engine,nope"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert bad.returncode == 2 and "unknown contender(s) nope" in bad.stderr


def test_bench_serve_cpu_refuses_an_option_its_part_does_not_read(repo, tmp_path):
    """--contenders is compare's, --hogs llamacpp-serve's, --repeat engine-detail's and
    server-overhead's: given to another part they are refused, not ignored."""
    script = [sys.executable, str(repo / "scripts" / "bench_serve_cpu.py")]
    for args, says in (
        (
            ["--part", "paired", "--contenders", "engine"],
            "--contenders applies to --part compare, not paired",
        ),
        (["--hogs", "1"], "--hogs applies to --part llamacpp-serve, not compare"),
        (["--part", "paired", "--repeat", "3"], "--repeat applies to --part engine-detail / server-overhead"),
    ):
        result = subprocess.run([*script, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert result.returncode == 2 and says in result.stderr, (args, result.stderr)


def test_bench_serve_cpu_takes_each_metrics_best_round(repo, monkeypatch):
    """Both comparisons take each metric's best round: the highest rate, the lowest time and memory
    (a noisy round only ever slows), so a ratio never pairs one side's quiet round with a busy one."""
    monkeypatch.syspath_prepend(str(repo / "scripts"))
    from servebench.measure import best_per_metric

    rounds = [
        {"b1_decode_tok_s": 19.0, "b8_e2e_tok_s": 70.0, "b1_ttft_s": 0.30, "peak_rss_mb": 1800.0},
        {"b1_decode_tok_s": 17.0, "b8_e2e_tok_s": 75.0, "b1_ttft_s": 0.25, "peak_rss_mb": 1790.0},
    ]
    best = best_per_metric(rounds, ("b1_decode_tok_s", "b8_e2e_tok_s", "b1_ttft_s", "peak_rss_mb", "rss_mb"))
    assert best == {"b1_decode_tok_s": 19.0, "b8_e2e_tok_s": 75.0, "b1_ttft_s": 0.25, "peak_rss_mb": 1790.0}
