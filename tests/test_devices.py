"""The GPU inventory (`ernie_ops.devices`) and its users, against a fake `pynvml` (there is no GPU
here): CUDA_VISIBLE_DEVICES applied as CUDA applies it, and no NVML library meaning "no GPU" with
the reason, never a traceback."""

from __future__ import annotations

import logging
import sys
import types

import pytest

from ernie_ops import devices
from ernie_ops.devices import gpus

A = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"
B = "GPU-8932f9aa-0000-4106-c12f-20bd9faed9f7"  # shares the prefix GPU-8932f9 with A
C = "GPU-c0d51234-1111-2222-3333-444455556666"
MIG_1 = "MIG-11111111-aaaa-bbbb-cccc-dddddddddddd"
MIG_2 = "MIG-22222222-aaaa-bbbb-cccc-dddddddddddd"
GIB = 2**30


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


def fake_nvml(boards: list[dict], init_error: Exception | None = None, fail_on: str | None = None):
    """A pynvml stand-in: BOARDS are {name, memory, uuid, migs: [(uuid, memory)]}."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = NVMLError  # type: ignore[attr-defined]
    nvml.NVMLError_LibraryNotFound = NVMLError_LibraryNotFound  # type: ignore[attr-defined]
    nvml.NVML_DEVICE_MIG_ENABLE = 1  # type: ignore[attr-defined]
    calls = {"shutdown": 0}

    def check(what: str) -> None:
        if fail_on == what:
            raise NVMLError("Unknown Error")

    def init() -> None:
        if init_error is not None:
            raise init_error

    def shutdown() -> None:
        calls["shutdown"] += 1

    def count() -> int:
        check("count")
        return len(boards)

    def mig_mode(handle):
        if "migs" not in handle:
            raise NVMLError("Not Supported")
        return (1, 1)

    def mig_handle(handle, slot):
        if slot >= len(handle["migs"]):
            raise NVMLError("Not Found")
        uuid, memory = handle["migs"][slot]
        return {"name": handle["name"], "memory": memory, "uuid": uuid}

    nvml.nvmlInit = init  # type: ignore[attr-defined]
    nvml.nvmlShutdown = shutdown  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = count  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: boards[i]  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetName = lambda h: h["name"].encode()  # type: ignore[attr-defined]  # old pynvml: bytes
    nvml.nvmlDeviceGetUUID = lambda h: h["uuid"]  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=h["memory"])  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMigMode = mig_mode  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMaxMigDeviceCount = lambda h: 7  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle  # type: ignore[attr-defined]
    nvml.calls = calls  # type: ignore[attr-defined]
    return nvml


BOARDS = [
    {"name": "NVIDIA A800-SXM4-80GB", "memory": 80 * GIB, "uuid": A},
    {"name": "NVIDIA A800-SXM4-80GB", "memory": 80 * GIB, "uuid": B},
    {"name": "NVIDIA H800", "memory": 79 * GIB, "uuid": C, "migs": [(MIG_1, 10 * GIB), (MIG_2, 20 * GIB)]},
]


@pytest.fixture
def nvml(monkeypatch):
    fake = fake_nvml(BOARDS)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def visible(value: str | None):
    return gpus({} if value is None else {"CUDA_VISIBLE_DEVICES": value})


def picked(value: str | None) -> list[int]:
    return [g.nvml_index for g in visible(value).gpus]


def test_unset_lists_every_gpu_in_nvml_order(nvml):
    found = visible(None)
    assert [(g.index, g.nvml_index, g.label) for g in found.gpus] == [(0, 0, "0"), (1, 1, "1"), (2, 2, "2")]
    first = found.gpus[0]
    assert first.name == "NVIDIA A800-SXM4-80GB" and first.memory_gib == 80 and first.uuid == A
    assert found.reason is None and len(found) == 3
    assert nvml.calls["shutdown"] == 1


def test_indices_are_enumerated_in_the_order_given(nvml):
    found = visible("2,0")
    assert [(g.index, g.nvml_index, g.label) for g in found.gpus] == [(0, 2, "2"), (1, 0, "0")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,2,-1,1", [0, 2]),  # CUDA's own example: -1 ends the list, 1 stays hidden
        ("1,x,0", [1]),
        ("0,7,1", [0]),  # out of range ends it too
        ("1gpu", [1]),  # read like strtoul
        (" 1 , 2 ", [1, 2]),
        ("0,1,0", []),  # a GPU named twice: none
        ("0,5,0", []),  # the repeat counts before the range
        ("", []),
        ("  ", []),
        ("-1", []),
    ],
)
def test_index_forms(nvml, value, expected):
    assert picked(value) == expected


def test_an_invalid_entry_is_reported_with_what_was_ignored(nvml):
    found = visible("0,2,-1,1")
    assert found.ignored == ("-1", "1")
    why = found.reason or ""
    assert "'-1' is not a GPU index" in why and "every entry after it" in why
    assert "empty" in (visible("").reason or "")
    assert "twice" in (visible("0,0").reason or "")
    assert "there is no GPU 7 (this machine has 3)" in (visible("7").reason or "")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (A, [0]),
        (f"{C},{A}", [2, 0]),
        ("GPU-c0d5", [2]),  # a prefix naming one GPU
        ("GPU-8932f9,GPU-c0d5", []),  # ambiguous (A and B): ends the list at once
        ("GPU-c0d5,GPU-8932f9", [2]),
        ("GPU-8932f937", [0]),
        (f"{A},1", [0]),  # after a UUID only UUIDs count
        (f"0,{A}", [0]),  # after an index only indices
        ("GPU-ffff", []),
        (f"{A},{A[:12]}", []),  # the same GPU twice
    ],
)
def test_uuid_forms(nvml, value, expected):
    assert picked(value) == expected


def test_mig_devices_by_uuid_and_prefix(nvml):
    found = visible(f"{MIG_2},MIG-1111")
    assert [(g.uuid, g.nvml_index, g.memory_gib, g.is_mig) for g in found.gpus] == [
        (MIG_2, 2, 20, True),
        (MIG_1, 2, 10, True),
    ]
    assert picked("MIG-2222,0") == [2]
    assert picked("MIG-3333") == []
    assert not any(g.is_mig for g in visible(None).gpus)  # unset: whole GPUs


def test_no_nvml_library_is_no_gpu_with_the_reason(monkeypatch):
    fake = fake_nvml(BOARDS, init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    found = gpus({})
    assert not found and "NVML library" in (found.reason or "")


def test_nvml_failures_are_no_gpu_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(BOARDS, init_error=NVMLError("Driver Not Loaded")))
    assert "Driver Not Loaded" in (gpus({}).reason or "")
    failing = fake_nvml(BOARDS, fail_on="count")
    monkeypatch.setitem(sys.modules, "pynvml", failing)
    assert "could not list" in (gpus({}).reason or "") and failing.calls["shutdown"] == 1
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: import fails
    assert "not installed" in (gpus({}).reason or "")


def test_the_real_library_on_this_machine_answers_without_a_traceback():
    found = gpus()
    assert isinstance(found, devices.Inventory)
    assert found.gpus or found.reason


# --- the users ----------------------------------------------------------------------------------


def test_train_detects_visible_gpus_by_machine_index(nvml, monkeypatch, caplog):
    from ernie_ops.train.launch import detect_gpus

    assert detect_gpus() == [0, 1, 2]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1")
    assert detect_gpus() == [2, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{C},{A}")
    assert detect_gpus() == [2, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG_1)
    with caplog.at_level(logging.WARNING, logger="ernie_ops.train.launch"):
        assert detect_gpus() == []  # never an exception: serve and the test suite ask it too
    assert "MIG devices" in caplog.text


def test_launch_env_gives_paddle_indices_for_uuids(nvml):
    from ernie_ops.train.launch import launch_env

    env = launch_env({"CUDA_VISIBLE_DEVICES": f"{C},GPU-8932f937"})
    assert env["CUDA_VISIBLE_DEVICES"] == "2,0" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert launch_env({"CUDA_VISIBLE_DEVICES": "1,0"})["CUDA_VISIBLE_DEVICES"] == "1,0"
    assert "CUDA_DEVICE_ORDER" not in launch_env({"CUDA_VISIBLE_DEVICES": "1,0"})
    assert "CUDA_VISIBLE_DEVICES" not in launch_env({})


def test_serve_preflight_honours_cuda_visible_devices(nvml, monkeypatch):
    from ernie_ops.errors import UserError
    from ernie_ops.serve import preflight

    assert [i for i, _, _ in preflight.gpu_inventory()] == [0, 1, 2]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert preflight.gpu_inventory() == [(1, "NVIDIA A800-SXM4-80GB", 80.0)]
    profile = types.SimpleNamespace(gpus=[0])
    with pytest.raises(UserError, match=r"gpus \[0\] are not visible here \(visible: \[1\]\)"):
        preflight.check_gpus(profile, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UserError, match=r"no GPU visible \(CUDA_VISIBLE_DEVICES is empty"):
        preflight.check_gpus(profile, None)


def test_doctor_warns_about_a_cpu_paddle_on_a_gpu_machine(nvml, monkeypatch):
    from ernie_ops import doctor

    check = doctor._cpu_build_gpu_check()
    assert check.status == "warn" and "3 GPU(s) here" in check.detail and "paddlepaddle-gpu" in check.fix
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    check = doctor._cpu_build_gpu_check()
    assert check.status == "info" and check.data["reason"].startswith("CUDA_VISIBLE_DEVICES is empty")
