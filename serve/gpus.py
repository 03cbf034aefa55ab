"""A small GPU catalog for the memory planner: usable memory, compute capability, FP8 support.

`memory_gib` is the total a process can see (what `nvidia-smi` reports as "Total", in MiB / 1024),
not the marketing figure in the name: an "80GB" H800 shows 81559 MiB. Figures are the commonly
reported `nvidia-smi` totals for each board; the datasheet figure is in `source`. Compute
capability is NVIDIA's CUDA GPU table (developer.nvidia.com/cuda-gpus). FP8 tensor cores exist from
SM 8.9 (Ada) and 9.0 (Hopper); FastDeploy's block_wise_fp8 needs them.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from ernie_ops.errors import UserError, did_you_mean

FP8_MIN_CAPABILITY = (8, 9)  # Ada (SM 8.9) and Hopper (SM 9.0): the first with FP8 tensor cores


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gib: float  # usable device memory as nvidia-smi reports it
    compute_capability: tuple[int, int]
    source: str
    aliases: tuple[str, ...] = ()

    @property
    def fp8(self) -> bool:
        return self.compute_capability >= FP8_MIN_CAPABILITY

    @property
    def arch(self) -> str:
        return {(7, 5): "Turing", (8, 0): "Ampere", (8, 6): "Ampere", (8, 9): "Ada", (9, 0): "Hopper"}.get(
            self.compute_capability, f"SM {self.compute_capability[0]}.{self.compute_capability[1]}"
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fp8"] = self.fp8
        data["arch"] = self.arch
        return data


def _mib(mib: int) -> float:
    return round(mib / 1024, 2)


GPUS: tuple[GpuSpec, ...] = (
    GpuSpec("H100-80G", _mib(81559), (9, 0), "H100 SXM5 datasheet: 80 GB HBM3", ("H100", "H100-SXM")),
    GpuSpec("H800-80G", _mib(81559), (9, 0), "H800 SXM5 (China H100 variant): 80 GB HBM3", ("H800",)),
    GpuSpec("H20-96G", _mib(97871), (9, 0), "H20 datasheet: 96 GB HBM3", ("H20",)),
    GpuSpec(
        "H20-141G",
        _mib(143771),
        (9, 0),
        "H20 (2025 refresh): 141 GB HBM3e; FastDeploy's tables call it 'H20 [144G]'",
        ("H20-144G", "H20-141GB", "H20-144GB"),
    ),
    GpuSpec("A100-80G", _mib(81920), (8, 0), "A100 SXM4/PCIe datasheet: 80 GB HBM2e", ("A100",)),
    GpuSpec("A100-40G", _mib(40960), (8, 0), "A100 SXM4/PCIe datasheet: 40 GB HBM2"),
    GpuSpec("A800-80G", _mib(81920), (8, 0), "A800 (China A100 variant): 80 GB HBM2e", ("A800",)),
    GpuSpec("L20-48G", _mib(46068), (8, 9), "L20 datasheet: 48 GB GDDR6 (ECC on)", ("L20",)),
    GpuSpec("L40S-48G", _mib(46068), (8, 9), "L40S datasheet: 48 GB GDDR6 (ECC on)", ("L40S",)),
    GpuSpec(
        "A30-24G",
        _mib(24576),
        (8, 0),
        "A30 datasheet: 24 GB HBM2 (FastDeploy's 0.3B/21B tables print 'A30 40GB', a misprint)",
        ("A30",),
    ),
    GpuSpec("A10-24G", _mib(23028), (8, 6), "A10 datasheet: 24 GB GDDR6 (ECC on)", ("A10",)),
    GpuSpec(
        "RTX4090-24G", _mib(24564), (8, 9), "GeForce RTX 4090: 24 GB GDDR6X", ("RTX4090", "4090", "RTX-4090")
    ),
    GpuSpec(
        "T4-16G",
        _mib(15360),
        (7, 5),
        "T4 datasheet: 16 GB GDDR6 (nvidia-smi 15360 MiB); in FastDeploy's tables. SM 7.5: FastDeploy's "
        "prebuilt 2.x wheels are built for SM 8.0/8.6/8.9/9.0 only",
        ("T4", "Tesla-T4"),
    ),
)
# Compute capabilities FastDeploy's prebuilt GPU wheels are built for (2.5: one wheel, SM80/86/89/90).
FASTDEPLOY_WHEEL_CAPABILITIES = ((8, 0), (8, 6), (8, 9), (9, 0))


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def find_gpu(name: str) -> GpuSpec:
    """A GPU by name or alias, forgiving about case, spaces, dashes and a trailing "GB"."""
    key = _key(name)
    key = key.removesuffix("b") if key.endswith("gb") else key
    names: dict[str, GpuSpec] = {}
    for gpu in GPUS:
        for label in (gpu.name, *gpu.aliases):
            k = _key(label)
            names[k.removesuffix("b") if k.endswith("gb") else k] = gpu
    if key in names:
        return names[key]
    guess = did_you_mean(key, list(names))
    hint = f"did you mean {names[guess].name!r}? " if guess else ""
    raise UserError(
        f"unknown GPU {name!r}",
        hint=hint + "known: " + ", ".join(g.name for g in GPUS),
    )


def gpu_from_smi(name: str, memory_gib: float) -> GpuSpec:
    """The catalog GPU for an nvidia-smi row ("NVIDIA A800-SXM4-80GB", 79.3): the model in the name,
    the variant by memory (H20 comes with 96 and 141 GB)."""
    words = [_key(t) for t in name.replace("-", " ").split()]
    tokens = {*words, *(a + b for a, b in itertools.pairwise(words))}  # "RTX 4090" -> rtx4090
    candidates = [g for g in GPUS if {_key(g.name.split("-")[0]), *map(_key, g.aliases)} & tokens]
    if not candidates:
        raise UserError(
            f"nvidia-smi reports a GPU ernie-ops does not know: {name!r}",
            hint="known: " + ", ".join(g.name for g in GPUS),
        )
    return min(candidates, key=lambda g: abs(g.memory_gib - memory_gib))
