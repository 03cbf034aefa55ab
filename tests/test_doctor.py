"""`ernie-ops doctor` on this machine, and its verdicts on situations that cannot be set up here."""

from __future__ import annotations

import json

import pytest

from ernie_ops import doctor
from ernie_ops.cli.main import main


@pytest.mark.cpu_stack
def test_doctor_json_on_this_cpu_machine(cli):
    result = cli("doctor", "--json", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)  # stdout is pure JSON even though the probes are chatty
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True
    assert checks["paddle"]["status"] == "ok"
    assert checks["paddle"]["data"]["device"] == "cpu"
    assert checks["paddle"]["data"]["version"].startswith("3.")
    assert checks["erniekit"]["status"] == "ok" and "`ernie` imports" in checks["erniekit"]["detail"]
    assert checks["paddleformers"]["data"]["version"]
    assert checks["fastdeploy"]["status"] == "info"
    assert "FastDeploy not installed (GPU nodes only)" in checks["fastdeploy"]["detail"]


@pytest.mark.cpu_stack
def test_doctor_text_output(cli):
    result = cli("doctor", timeout=120)
    assert result.returncode == 0
    assert "FastDeploy not installed (GPU nodes only)" in result.stdout
    assert "device: cpu" in result.stdout


def _fake_versions(monkeypatch, **versions):
    real = doctor.dist_version

    def fake(*names):
        for name in names:
            if name in versions:
                return (name, versions[name]) if versions[name] else None
        return real(*names)

    monkeypatch.setattr(doctor, "dist_version", fake)


@pytest.mark.cpu_stack
def test_missing_erniekit_fails_with_a_fix(monkeypatch, capsys):
    _fake_versions(monkeypatch, erniekit=None)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  erniekit" in out and "erniekit 1.0.1" in out
    assert "problems: erniekit" in out


# FastDeploy is GPU-only and not installable here: its checks run on simulated installed versions.
def _check_fd(monkeypatch, version, paddle, gpus):
    _fake_versions(monkeypatch, **{"fastdeploy-gpu": version, "fastdeploy": None})
    return doctor.check_fastdeploy(paddle, gpus)


def test_fastdeploy_matching_paddle_is_ok(monkeypatch):
    checks = _check_fd(monkeypatch, "2.3.1", paddle="3.2.1", gpus=1)
    assert [c.status for c in checks] == ["ok"]


def test_fastdeploy_with_the_wrong_paddle_says_which_one(monkeypatch):
    (check,) = _check_fd(monkeypatch, "2.3.1", paddle="3.3.1", gpus=1)
    assert check.status == "warn" and "paddlepaddle-gpu==3.2.1" in check.fix


def test_fastdeploy_without_a_gpu_warns(monkeypatch):
    (check,) = _check_fd(monkeypatch, "2.5.0", paddle="3.3.1", gpus=0)
    assert check.status == "warn" and "no GPU" in check.detail


def test_unrelated_pypi_fastdeploy_is_flagged(monkeypatch):
    _fake_versions(monkeypatch, **{"fastdeploy": "3.1.1", "fastdeploy-gpu": None})
    checks = doctor.check_fastdeploy("3.3.1", 0)
    assert checks[0].status == "warn" and "unrelated" in checks[0].detail


def _fake_paddle(*gpus):
    """A stand-in for paddle.device.cuda with the given (name, major, minor, bytes) devices."""
    from types import SimpleNamespace

    props = [SimpleNamespace(name=n, major=a, minor=b, total_memory=m) for n, a, b, m in gpus]
    cuda = SimpleNamespace(get_device_properties=lambda i: props[i])
    return SimpleNamespace(device=SimpleNamespace(cuda=cuda))


# No GPU here: the per-device verdicts run on simulated device properties.
def test_gpu_report_names_capability_and_memory():
    checks = doctor._gpu_checks(_fake_paddle(("NVIDIA A800-SXM4-80GB", 8, 0, 80 * 2**30)), 1)
    assert [c.status for c in checks] == ["ok"]
    assert "compute capability 8.0" in checks[0].detail and "80 GiB" in checks[0].detail


def test_gpu_unsupported_by_fastdeploy_wheels_warns():
    (check,) = doctor._gpu_checks(_fake_paddle(("Tesla V100-SXM2-32GB", 7, 0, 32 * 2**30)), 1)
    assert check.status == "warn" and "SM 80/86/89/90" in check.fix


def test_cuda_build_without_visible_gpu_warns():
    (check,) = doctor._gpu_checks(_fake_paddle(), 0)
    assert check.status == "warn" and "CUDA_VISIBLE_DEVICES" in check.fix
