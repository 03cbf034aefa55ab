"""The GPUs this process can use, in one place: NVML (`nvidia-ml-py`, the `pynvml` module) lists the
devices, and CUDA_VISIBLE_DEVICES is applied the way CUDA applies it. No Paddle import, no nvidia-smi.

CUDA_VISIBLE_DEVICES, as CUDA reads it (CUDA C Programming Guide, "CUDA Environment Variables"; the
same rules PyTorch's device count reproduces):
- unset: every GPU; empty (or blank): no GPU at all;
- a comma-separated list, enumerated in the order given (entry N becomes CUDA device N);
- entries are GPU indices (`0,2`; read like strtoul: leading digits count, `1gpu` is 1), or GPU UUIDs
  as nvidia-smi prints them (`GPU-8932f937-...`) or any prefix that names exactly one GPU
  (`GPU-8932f937`), or MIG device UUIDs (`MIG-...`, prefixes likewise). The first entry decides the
  kind: after a `GPU-` entry only `GPU-` entries count, after a `MIG-` entry only `MIG-` entries;
- the first invalid entry (not a number, negative, out of range, an unknown or ambiguous UUID, the
  other kind) ends the list: the GPUs before it stay visible, those after it do not;
- a GPU named twice makes no GPU visible.

An index means NVML's index (PCI bus order, as nvidia-smi numbers GPUs). CUDA numbers them so too
with CUDA_DEVICE_ORDER=PCI_BUS_ID; its default (fastest first) can differ only on a machine that
mixes GPU models.

Without the NVML library (no NVIDIA driver) or when NVML fails, the answer is "no GPU" with the
reason, never an exception.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

VISIBLE = "CUDA_VISIBLE_DEVICES"
_LEADING_NUMBER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Gpu:
    """One device this process can use."""

    index: int  # the CUDA device number in this process (its place in CUDA_VISIBLE_DEVICES)
    nvml_index: int  # the machine's number for it, as nvidia-smi shows it (a MIG device: its GPU's)
    name: str
    memory_bytes: int
    uuid: str  # GPU-... (a MIG device: MIG-...)
    label: str  # how CUDA_VISIBLE_DEVICES named it (its NVML index when the variable is unset)

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / 2**30

    @property
    def is_mig(self) -> bool:
        return self.uuid.startswith("MIG-")

    def describe(self) -> str:
        return f"GPU {self.index}: {self.name}, {self.memory_gib:.0f} GiB ({self.uuid})"


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[Gpu, ...] = ()
    reason: str | None = None  # why there is no GPU (or fewer than named), in words
    ignored: tuple[str, ...] = field(default=())  # CUDA_VISIBLE_DEVICES entries CUDA does not use

    def __bool__(self) -> bool:
        return bool(self.gpus)

    def __len__(self) -> int:
        return len(self.gpus)


@dataclass(frozen=True)
class _Device:
    nvml_index: int
    name: str
    memory_bytes: int
    uuid: str


def gpus(env: Mapping[str, str] | None = None) -> Inventory:
    """The GPUs visible to a CUDA process started with ENV (default: this process's environment)."""
    env = os.environ if env is None else env
    visible = env.get(VISIBLE)
    if visible is not None and not visible.strip():
        return Inventory(reason=f"{VISIBLE} is empty: CUDA sees no GPU")
    found = _nvml_devices()
    if isinstance(found, str):
        return Inventory(reason=found)
    devices, migs = found
    if visible is None:
        chosen = [(d, str(d.nvml_index)) for d in devices]
        return _inventory(chosen, (), "NVML found no GPU" if not chosen else None)
    chosen, ignored, why = _apply_visible(visible, devices, migs)
    return _inventory(chosen, ignored, why)


def _inventory(chosen: list[tuple[_Device, str]], ignored: tuple[str, ...], why: str | None) -> Inventory:
    listed = tuple(
        Gpu(i, d.nvml_index, d.name, d.memory_bytes, d.uuid, label) for i, (d, label) in enumerate(chosen)
    )
    return Inventory(listed, why, ignored)


def _apply_visible(
    visible: str, devices: list[_Device], migs: list[_Device]
) -> tuple[list[tuple[_Device, str]], tuple[str, ...], str | None]:
    """The devices CUDA_VISIBLE_DEVICES names, in its order; the entries CUDA ignores; why."""
    entries = [e.strip() for e in visible.split(",")]
    kind = "GPU-" if entries[0].startswith("GPU-") else "MIG-" if entries[0].startswith("MIG-") else None
    # first the entries of the right form (up to the first that is not), then the devices they name
    named: list[str] = []
    problem = None
    for entry in entries:
        problem = _malformed(entry, kind)
        if problem:
            break
        named.append(entry)
    keys = [_number(e) for e in named] if kind is None else named
    if len(set(keys)) != len(keys):
        return [], tuple(entries), f"{VISIBLE}={visible!r} names a GPU twice: CUDA then sees no GPU"
    chosen: list[tuple[_Device, str]] = []
    for entry in named:
        device, unknown = _resolve(entry, kind, devices, migs)
        if device is None:
            problem = unknown
            break
        if any(device.uuid == seen.uuid for seen, _ in chosen):
            twice = f"{VISIBLE}={visible!r} names {device.uuid} twice: CUDA then sees no GPU"
            return [], tuple(entries), twice
        chosen.append((device, entry))
    ignored = tuple(entries[len(chosen) :])
    why = f"{VISIBLE}={visible!r}: {problem}; CUDA ignores it and every entry after it" if ignored else None
    return chosen, ignored, why


def _number(entry: str) -> int:
    """An index entry read as strtoul reads it (leading digits: `1gpu` is 1); -1 when there are none."""
    match = _LEADING_NUMBER.match(entry)
    return int(match.group()) if match else -1


def _malformed(entry: str, kind: str | None) -> str | None:
    if kind is None:
        return None if _number(entry) >= 0 else f"{entry!r} is not a GPU index"
    if not entry.startswith(kind):
        return f"{entry!r} is not a {kind} UUID like the entries before it"
    return None


def _resolve(
    entry: str, kind: str | None, devices: list[_Device], migs: list[_Device]
) -> tuple[_Device | None, str]:
    """The device ENTRY names, or None and why it names none."""
    if kind is None:
        index = _number(entry)
        if index >= len(devices):
            return None, f"there is no GPU {index} (this machine has {len(devices)})"
        return devices[index], ""
    pool = devices if kind == "GPU-" else migs
    matches = [d for d in pool if d.uuid.startswith(entry)]
    if len(matches) == 1:
        return matches[0], ""
    if matches:
        return None, f"{entry!r} matches {len(matches)} devices (ambiguous)"
    return None, f"no {'GPU' if kind == 'GPU-' else 'MIG device'} has a UUID starting {entry!r}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _nvml_devices() -> tuple[list[_Device], list[_Device]] | str:
    """Every GPU and every MIG device NVML reports, or why NVML cannot say."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py (pynvml) is not installed, so GPUs cannot be listed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return "no NVIDIA driver here (the NVML library libnvidia-ml is not found)"
    except pynvml.NVMLError as err:
        return f"NVML did not start ({_text(err)}): is the NVIDIA driver loaded?"
    try:
        devices, migs = [], []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = _text(pynvml.nvmlDeviceGetName(handle))
            devices.append(_Device(i, name, _memory(pynvml, handle), _text(pynvml.nvmlDeviceGetUUID(handle))))
            migs += _mig_devices(pynvml, handle, i, name)
        return devices, migs
    except pynvml.NVMLError as err:
        return f"NVML could not list the GPUs ({_text(err)})"
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _memory(pynvml: Any, handle: Any) -> int:
    return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)


def _mig_devices(pynvml: Any, handle: Any, index: int, name: str) -> list[_Device]:
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError:  # not a MIG-capable GPU
        return []
    if current != pynvml.NVML_DEVICE_MIG_ENABLE:
        return []
    out = []
    for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except pynvml.NVMLError:  # an empty slot
            continue
        uuid = _text(pynvml.nvmlDeviceGetUUID(mig))
        out.append(_Device(index, f"{name} MIG", _memory(pynvml, mig), uuid))
    return out
