"""The memory planner: will a model fit, on which GPUs, at which precision and context?

Pure arithmetic over the catalog's shapes (no Paddle, no GPU). Two questions:

* `plan_serve`: FastDeploy serving. Per GPU: weights (by quantization, split over tensor-parallel
  ranks) + activations of the profiling forward pass + a runtime allowance + the KV cache for
  `max_num_seqs` sequences of `max_model_len` tokens, all within `gpu_memory_utilization` of the
  card. FastDeploy gives the KV cache whatever is left after weights and the profiling pass
  (fastdeploy.md), so "fits" here means: the leftover holds every admitted sequence at full length.
  With `engine="vllm"` the same arithmetic follows vLLM's memory model instead (vLLM 0.34's
  `gpu_worker.determine_available_memory`): KV cache = memory x gpu_memory_utilization - weights -
  the profiling pass over max_num_batched_tokens (chunked prefill) - the CUDA-graph memory it
  measures - non-torch memory, in blocks of 16 tokens; bf16 and online fp8 only (the assumptions are
  printed with the plan).
* `plan_train`: an ERNIEKit recipe. Weights, gradients and AdamW states per GPU after tensor /
  pipeline parallelism and sharding, LoRA adapters, quantized bases, and activations.

Every constant says where it comes from; those that are allowances (not measured here) say so.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.catalog import ModelSpec, find_model
from ernie_ops.errors import UserError, did_you_mean
from ernie_ops.serve.gpus import GpuSpec, find_gpu

GIB = 1024**3

# --- FastDeploy defaults (fastdeploy.md, "Flags that matter most") ---------------------------
FD_MAX_MODEL_LEN = 2048
FD_MAX_NUM_SEQS = 8
FD_GPU_MEMORY_UTILIZATION = 0.9
FD_BLOCK_SIZE = 64  # KV cache blocks of 64 tokens; cacheable tokens = blocks x 64
TP_CHOICES = (1, 2, 4, 8)  # FastDeploy's documented deployments use these tensor-parallel sizes

# --- allowances (estimates, not measurements; chosen once for all models, see the test) -------
# CUDA context outside the pool is already in the 10% gpu_memory_utilization leaves free; inside
# it: CUDA-graph pools for the decode batch sizes, NCCL buffers, weight-only GEMM workspaces and
# allocator slack. 1 GiB per GPU is the allowance.
RUNTIME_ALLOWANCE_GIB = 1.0
# Activation bytes per token of the profiling pass, as multiples of hidden_size x 2 bytes: residual,
# two norm outputs, q/k/v, attention output, o_proj output and fused-kernel temporaries (~20
# hidden-sized bf16 tensors live at the peak of one decoder layer; layers run one at a time).
ACT_HIDDEN_TENSORS = 20
# FFN/expert intermediates: gate+up (2 x I) and the SwiGLU output (I), bf16.
ACT_FFN_TENSORS = 3
# Vision encoder profiling (VL): FastDeploy profiles the largest image its processor admits:
# image_max_pixels 6177*28*28 -> 6177*4 patches of 14x14 before the 2x2 merge (fastdeploy.md).
VL_MAX_IMAGE_PATCHES = 6177 * 4

# --- weights ----------------------------------------------------------------------------------
BF16 = 2.0
# Weight-only int8/int4 keep one bf16 scale per output channel: +2 bytes per `in_features`
# weights (FastDeploy weight_only); the planner uses hidden_size as in_features.
# wint2 (the -2Bits checkpoints): 2 bits + one 8-bit scale per 64-weight group. With that the
# 300B-A47B total is ~90 GB against the "wint2 89 GB" FastDeploy states (fastdeploy.md).
WINT2_BYTES = 0.25 + 1 / 64
# block_wise_fp8: 1 byte + one fp32 scale per 128x128 block.
FP8_BYTES = 1.0 + 4 / (128 * 128)
# w4afp8 experts (FastDeploy 2.5 CutlassW4AFP8MoEMethod, online): INT4 packed two per byte + one
# fp32 scale per 128-weight group (group_wise_int4_weight_quantize(group_size=128), scale float32).
W4AFP8_EXPERT_BYTES = 0.5 + 4 / 128

# quantization -> (bytes per dense linear weight, bytes per expert weight, KV cache bytes per value)
# Embeddings, lm_head, MoE gates and the vision encoder stay bf16.
QUANTIZATIONS: dict[str, tuple[str, str, int]] = {
    "bf16": ("bf16", "bf16", 2),
    "wint8": ("int8", "int8", 2),
    # on ERNIE MoE models FastDeploy rewrites wint4 to mix_quant: dense wint8, experts wint4;
    # dense models (0.3B) get wint4 everywhere (resolved in _linear_bytes)
    "wint4": ("int8", "int4", 2),
    "wint2": ("int8", "int2", 2),  # pre-quantized -2Bits checkpoint: experts 2-bit, dense int8
    "block_wise_fp8": ("fp8", "fp8", 2),
    "tensor_wise_fp8": ("fp8t", "fp8t", 2),  # fp8 with one scale per tensor
    # W4A8C8: int4 experts, int8 dense, int8 activations and an int8 (C8) KV cache; the published
    # checkpoint carries scales for exactly 4 ranks (docs/best_practices ERNIE-4.5-300B-A47B tip 2)
    "w4a8": ("int8", "int4", 1),
    # W4AFP8 (FastDeploy parse_quant_config, 2.4+): an online mix_quant of MoE models, dense layers
    # block_wise_fp8 and experts INT4 weights with FP8 activations; the KV cache stays bf16
    "w4afp8": ("fp8", "w4afp8", 2),
}
ALIASES = {"fp8": "block_wise_fp8", "bfloat16": "bf16", "none": "bf16", "mix_quant": "wint4"}
# lowest precision loss first: the order `plan_serve` tries when no quantization is given
# (w4afp8 is not tried unasked: its weights are never smaller than wint4's, so it cannot fit where
# wint4 does not)
LOSS_ORDER = ("bf16", "wint8", "block_wise_fp8", "wint4", "w4a8", "wint2")
PRE_QUANTIZED = {"wint2": "-2Bits-", "w4a8": "-W4A8C8-"}  # needs a checkpoint with this in its hub id
FIXED_TP = {"w4a8": 4}

# Host RAM FastDeploy's docs ask for (fastdeploy.md, "Published minimum GPUs")
HOST_RAM_NOTES = {
    "ERNIE-4.5-21B-A3B": "FastDeploy's docs ask for 128 GB host RAM to load 21B-A3B.",
    "ERNIE-4.5-300B-A47B": "FastDeploy's docs ask for 600 GB host RAM to load 300B-A47B (wint4 4x64 GB).",
}


# --- vLLM (vllm 0.34.0 source, the release of serve/data/vllm-flags.json) -----------------------
ENGINES = ("fastdeploy", "vllm")
VLLM_BLOCK_SIZE = 16  # CUDA attention backends' default KV block (CacheConfig.block_size unset)
VLLM_GPU_MEMORY_UTILIZATION = 0.92  # CacheConfig.DEFAULT_GPU_MEMORY_UTILIZATION
# `--quantization` equivalents it has for a bf16 checkpoint (serve/backends/vllm.py)
VLLM_QUANTIZATIONS = {
    "bf16": "--dtype bfloat16",
    "block_wise_fp8": "fp8_per_block",
    "tensor_wise_fp8": "fp8_per_tensor",
}
VLLM_LOSS_ORDER = ("bf16", "block_wise_fp8")
# The profiling pass runs max_num_batched_tokens tokens (chunked prefill, on by default); unset, the
# API server's default by GPU memory (EngineArgs defaults): >= 160 GiB 16384, >= 70 GiB (not A100)
# 8192, else 2048.
VLLM_CUDA_GRAPH_ALLOWANCE_GIB = 1.0  # allowance: vLLM measures the graphs' pool and subtracts it
VLLM_NON_TORCH_ALLOWANCE_GIB = 0.5  # allowance: NCCL, cuBLAS workspaces outside torch's allocator


def vllm_batched_tokens(gpu: GpuSpec) -> int:
    """vLLM's default max_num_batched_tokens for the OpenAI server on this GPU."""
    if gpu.memory_gib >= 160:
        return 16384
    if gpu.memory_gib >= 70 and "A100" not in gpu.name.upper():
        return 8192
    return 2048


def normalize_quantization(name: str | None) -> str:
    key = (name or "bf16").strip().lower()
    key = ALIASES.get(key, key)
    if key not in QUANTIZATIONS:
        guess = did_you_mean(key, list(QUANTIZATIONS))
        raise UserError(
            f"unknown quantization {name!r}",
            hint=(f"did you mean {guess!r}? " if guess else "") + "one of: " + ", ".join(QUANTIZATIONS),
        )
    return key


# --- parameter counts --------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by kind (counts, not bytes), from the catalog's shapes."""

    embeddings: int  # token embedding + an untied lm_head
    attention: int  # q, k, v, o of every layer
    dense_ffn: int  # FFN of dense layers + shared experts (quantized as dense)
    experts: int  # routed text experts (and vision experts for VL)
    gates: int  # MoE routers
    vision_encoder: int  # VL: the ViT and its projector
    inferred: str = ""  # what was filled in from the card's total

    @property
    def linear_dense(self) -> int:
        return self.attention + self.dense_ffn

    @property
    def total(self) -> int:
        return (
            self.embeddings
            + self.attention
            + self.dense_ffn
            + self.experts
            + self.gates
            + self.vision_encoder
        )


def _attention_params(m: ModelSpec) -> int:
    q = m.num_heads * m.head_dim
    kv = m.num_kv_heads * m.head_dim
    return m.hidden_size * (q + 2 * kv) + q * m.hidden_size


def _vision_encoder_params(m: ModelSpec) -> int:
    """DFNRope ViT: per block qkv+proj (4 h^2) and a 4x MLP (8 h^2); then the 2x2 patch merger
    (4h -> 4h -> hidden). Approximate: norms and biases left out."""
    if m.vision is None:
        return 0
    h = m.vision.hidden_size
    merged = h * m.vision.spatial_merge_size**2
    return m.vision.depth * 12 * h * h + merged * merged + merged * m.hidden_size


def count_params(m: ModelSpec) -> ParamCounts:
    h = m.hidden_size
    embeddings = m.vocab_size * h * (1 if m.tie_word_embeddings else 2)  # None: assume untied
    attention = m.num_layers * _attention_params(m)
    dense_layers = m.moe_layer_start if m.is_moe else m.num_layers
    dense_ffn = dense_layers * 3 * h * m.intermediate_size
    moe_layers = m.num_moe_layers
    dense_ffn += moe_layers * m.num_shared_experts * 3 * h * m.moe_intermediate_size
    experts = moe_layers * m.num_experts * 3 * h * m.moe_intermediate_size
    experts += moe_layers * m.num_vision_experts * 3 * h * m.vision_moe_intermediate_size
    gates = moe_layers * h * (m.num_experts + m.num_vision_experts)
    vision = _vision_encoder_params(m)
    counts = ParamCounts(embeddings, attention, dense_ffn, experts, gates, vision)
    if m.is_vl and m.vision_moe_intermediate_size == 0:
        # the catalog leaves the vision experts/encoder of VL-424B empty: fill the gap to the card's
        # total with vision-expert weights (quantized like experts), and say so
        gap = max(0, int(m.total_params_b * 1e9) - counts.total)
        counts = ParamCounts(
            embeddings, attention, dense_ffn, experts + gap, gates, vision,
            inferred=f"{gap / 1e9:.0f}B vision-expert/encoder parameters inferred from the card's total",
        )  # fmt: skip
    return counts


# --- serving ---------------------------------------------------------------------------------


def _bytes_per_weight(kind: str, hidden: int) -> float:
    scale = 2 / hidden  # one bf16 per-channel scale per in_features weights
    return {
        "bf16": BF16,
        "int8": 1.0 + scale,
        "int4": 0.5 + scale,
        "int2": WINT2_BYTES,
        "fp8": FP8_BYTES,
        "fp8t": 1.0,
        "w4afp8": W4AFP8_EXPERT_BYTES,
    }[kind]


def weight_bytes(m: ModelSpec, quantization: str) -> dict[str, float]:
    """Weight bytes of the whole model by part, for one quantization."""
    q = normalize_quantization(quantization)
    dense_kind, expert_kind, _ = QUANTIZATIONS[q]
    if not m.is_moe and q in ("wint4", "wint2", "w4a8"):
        dense_kind = expert_kind  # no experts: the low-bit format applies to every linear layer
    p = count_params(m)
    return {
        "embeddings (bf16)": p.embeddings * BF16,
        f"attention + dense FFN ({dense_kind})": p.linear_dense
        * _bytes_per_weight(dense_kind, m.hidden_size),
        f"experts ({expert_kind})": p.experts * _bytes_per_weight(expert_kind, m.hidden_size),
        "gates + vision encoder (bf16)": (p.gates + p.vision_encoder) * BF16,
    }


def kv_bytes_per_token_per_gpu(m: ModelSpec, tensor_parallel: int, kv_dtype_bytes: int = 2) -> int:
    """K and V per token on one rank: KV heads split over ranks, replicated when fewer than ranks."""
    heads_per_rank = math.ceil(m.num_kv_heads / tensor_parallel)
    return 2 * m.num_layers * heads_per_rank * m.head_dim * kv_dtype_bytes


def activation_bytes(m: ModelSpec, tokens: int, tensor_parallel: int) -> float:
    """Peak activations of FastDeploy's profiling forward pass over `tokens` tokens, on one rank."""
    ffn = m.intermediate_size
    if m.is_moe:
        ffn = max(ffn, m.experts_per_token * m.moe_intermediate_size)
    per_token = ACT_HIDDEN_TENSORS * m.hidden_size * BF16 + ACT_FFN_TENSORS * ffn * BF16 / tensor_parallel
    total = tokens * per_token
    if m.is_vl:
        vit_hidden = m.vision.hidden_size if m.vision else 1280  # VL-424B: the 28B ViT's width
        total += VL_MAX_IMAGE_PATCHES * ACT_HIDDEN_TENSORS * vit_hidden * BF16
    return total


@dataclass
class ServePlan:
    model: str
    gpu: str
    gpu_memory_gib: float
    tensor_parallel: int
    quantization: str
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    budget_gib: float  # per GPU: memory x utilization
    weights_gib: float  # per GPU
    activation_gib: float
    runtime_gib: float
    kv_needed_gib: float  # max_num_seqs x max_model_len tokens
    kv_free_gib: float  # what is left for the KV cache
    kv_bytes_per_token: int  # per GPU
    kv_capacity_tokens: int  # in whole 64-token blocks
    max_num_seqs_at_len: int  # at max_model_len
    max_model_len_at_seqs: int  # at max_num_seqs, capped at the model's context
    fits: bool
    weights_by_part_gib: dict[str, float] = field(default_factory=dict)  # whole model
    notes: list[str] = field(default_factory=list)
    considered: list[dict[str, Any]] = field(default_factory=list)  # auto mode: what was tried
    engine: str = "fastdeploy"  # whose memory model: fastdeploy | vllm
    profiled_tokens: int = 0  # tokens of the profiling forward pass
    block_size: int = FD_BLOCK_SIZE  # KV cache block, tokens
    assumptions: list[str] = field(default_factory=list)  # printed with the plan (vLLM)

    @property
    def gpus(self) -> int:
        return self.tensor_parallel

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpus"] = self.gpus
        return data

    def explain(self) -> str:
        rows = [
            ("engine", {"fastdeploy": "FastDeploy", "vllm": "vLLM"}.get(self.engine, self.engine)),
            ("GPU", f"{self.tensor_parallel} x {self.gpu} ({self.gpu_memory_gib:.1f} GiB each)"),
            ("quantization", self.quantization),
            ("budget / GPU", f"{self.gpu_memory_gib:.1f} GiB x {self.gpu_memory_utilization:g} = "
                             f"{self.budget_gib:.2f} GiB"),
        ]  # fmt: skip
        for part, gib in self.weights_by_part_gib.items():
            rows.append((f"  {part}", f"{gib:8.2f} GiB total"))
        total_w = sum(self.weights_by_part_gib.values())
        rows += [
            ("weights / GPU", f"{total_w:.2f} GiB / TP {self.tensor_parallel} = {self.weights_gib:.2f} GiB"),
            ("activations / GPU", f"{self.activation_gib:.2f} GiB (profiling, "
                                  f"{self.profiled_tokens or self.max_model_len} tokens)"),
            ("runtime allowance", f"{self.runtime_gib:.2f} GiB (CUDA graphs, NCCL, workspaces)"),
            ("left for KV cache", f"{self.kv_free_gib:.2f} GiB"),
            ("KV cache / token / GPU", f"{self.kv_bytes_per_token / 1024:g} KiB"),
            ("KV needed", f"{self.max_num_seqs} x {self.max_model_len} tok = {self.kv_needed_gib:.2f} GiB"),
            ("KV capacity", f"{self.kv_capacity_tokens:,} tokens ({self.block_size}-token blocks)"),
            ("max seqs at this length", str(self.max_num_seqs_at_len)),
            ("max length at these seqs", f"{self.max_model_len_at_seqs:,}"),
            ("verdict", "FITS" if self.fits else "DOES NOT FIT"),
        ]  # fmt: skip
        width = max(len(r[0]) for r in rows)
        lines = [f"{self.model}: serve plan", *(f"  {k.ljust(width)}  {v}" for k, v in rows)]
        if self.considered:
            lines.append("  considered (fewest GPUs first, then lowest precision loss):")
            lines += [
                f"    TP {c['tensor_parallel']} {c['quantization']:15} "
                + ("fits" if c["fits"] else f"no: {c['why']}")
                for c in self.considered
            ]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  assumes: {a}" for a in self.assumptions]
        return "\n".join(lines)


def _resolve(model: ModelSpec | str, gpu: GpuSpec | str) -> tuple[ModelSpec, GpuSpec]:
    return (find_model(model) if isinstance(model, str) else model), (
        find_gpu(gpu) if isinstance(gpu, str) else gpu
    )


def unsupported(m: ModelSpec, gpu: GpuSpec, quantization: str, tensor_parallel: int | None) -> str | None:
    """Why this combination cannot run at all (not a memory question), or None."""
    if quantization == "block_wise_fp8" and not gpu.fp8:
        return (
            f"block_wise_fp8 needs FP8 tensor cores (Hopper or Ada, SM 8.9+); {gpu.name} is "
            f"{gpu.arch} (SM {gpu.compute_capability[0]}.{gpu.compute_capability[1]})"
        )
    if quantization == "w4afp8":
        why = _w4afp8_unsupported(m, gpu, tensor_parallel)
        if why:
            return why
    if quantization in PRE_QUANTIZED and not any(PRE_QUANTIZED[quantization] in h for h in m.hub_ids):
        return f"{quantization} needs a pre-quantized checkpoint and {m.name} has none published"
    fixed = FIXED_TP.get(quantization)
    if fixed and tensor_parallel not in (None, fixed):
        return f"the {quantization} checkpoint carries scales for exactly {fixed} ranks (TP {fixed})"
    if tensor_parallel is not None and m.num_heads % tensor_parallel:
        return f"{m.num_heads} attention heads do not split over {tensor_parallel} ranks"
    return None


def _w4afp8_unsupported(m: ModelSpec, gpu: GpuSpec, tensor_parallel: int | None) -> str | None:
    # FastDeploy 2.5: the experts' W4AFP8 GEMM (custom_ops/gpu_ops/w4afp8_gemm) is built with Hopper's
    # warpgroup MMA (cute GMMA) and only for SM 9.0; dense models have no experts to quantize
    if not m.is_moe:
        return (
            f"w4afp8 quantizes MoE experts and {m.name} has none (FastDeploy would run it as block_wise_fp8)"
        )
    if gpu.compute_capability != (9, 0):
        cc = ".".join(map(str, gpu.compute_capability))
        return f"w4afp8's expert GEMM is built for Hopper (SM 9.0) only; {gpu.name} is {gpu.arch} (SM {cc})"
    if tensor_parallel and m.moe_intermediate_size % tensor_parallel:
        # FastDeploy's _compute_hadamard_block_size raises on it
        return (
            f"w4afp8 needs the expert size {m.moe_intermediate_size} divisible by the "
            f"{tensor_parallel} tensor-parallel ranks"
        )
    return None


def _plan_one(
    m: ModelSpec,
    gpu: GpuSpec,
    q: str,
    tp: int,
    max_model_len: int,
    max_num_seqs: int,
    util: float,
    engine: str = "fastdeploy",
    max_num_batched_tokens: int | None = None,
) -> ServePlan:
    vllm = engine == "vllm"
    parts = weight_bytes(m, q)
    weights = sum(parts.values()) / tp
    profiled = (max_num_batched_tokens or vllm_batched_tokens(gpu)) if vllm else max_model_len
    act = activation_bytes(m, profiled, tp)
    runtime_gib = (
        VLLM_CUDA_GRAPH_ALLOWANCE_GIB + VLLM_NON_TORCH_ALLOWANCE_GIB if vllm else RUNTIME_ALLOWANCE_GIB
    )
    runtime = runtime_gib * GIB
    budget = gpu.memory_gib * util * GIB
    kv_per_token = kv_bytes_per_token_per_gpu(m, tp, QUANTIZATIONS[q][2])
    free = budget - weights - act - runtime
    block = VLLM_BLOCK_SIZE if vllm else FD_BLOCK_SIZE
    blocks = max(0, int(free // (kv_per_token * block)))
    capacity = blocks * block
    needed = max_num_seqs * max_model_len * kv_per_token
    notes = []
    assumptions = _vllm_assumptions(q, profiled, block, runtime_gib) if vllm else []
    if m.is_moe and q == "wint4" and not vllm:
        notes.append("FastDeploy runs wint4 on ERNIE MoE models as mix_quant: dense wint8, experts wint4.")
    if q in PRE_QUANTIZED:
        notes.append(f"{q} loads a pre-quantized checkpoint ({PRE_QUANTIZED[q].strip('-')}), not online.")
    if q == "w4afp8":
        notes.append(
            "FastDeploy (2.4+) runs w4afp8 as mix_quant: dense block_wise_fp8, experts INT4 weights with "
            "FP8 activations, quantized online from the BF16 checkpoint."
        )
    if m.name in HOST_RAM_NOTES and not vllm:
        notes.append(HOST_RAM_NOTES[m.name])
    if count_params(m).inferred:
        notes.append(count_params(m).inferred + ".")
    return ServePlan(
        model=m.name,
        gpu=gpu.name,
        gpu_memory_gib=gpu.memory_gib,
        tensor_parallel=tp,
        quantization=q,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        gpu_memory_utilization=util,
        budget_gib=budget / GIB,
        weights_gib=weights / GIB,
        activation_gib=act / GIB,
        runtime_gib=runtime / GIB,
        kv_needed_gib=needed / GIB,
        kv_free_gib=free / GIB,
        kv_bytes_per_token=kv_per_token,
        kv_capacity_tokens=capacity,
        max_num_seqs_at_len=capacity // max_model_len,
        max_model_len_at_seqs=min(m.max_context, capacity // max(1, max_num_seqs)),
        fits=free > 0 and capacity >= max_num_seqs * max_model_len,
        weights_by_part_gib={k: v / GIB for k, v in parts.items()},
        notes=notes,
        engine=engine,
        profiled_tokens=profiled,
        block_size=block,
        assumptions=assumptions,
    )


def _vllm_assumptions(q: str, profiled: int, block: int, runtime_gib: float) -> list[str]:
    quant = {
        "bf16": "bf16 weights (--dtype bfloat16)",
        "block_wise_fp8": "online fp8 (--quantization fp8_per_block): linear and expert weights 1 byte + "
        "one fp32 scale per 128x128 block",
        "tensor_wise_fp8": "online fp8 (--quantization fp8_per_tensor): linear and expert weights 1 byte",
    }[q]
    return [
        f"vLLM: {quant}; embeddings, lm_head, MoE routers and the vision encoder stay bf16",
        "KV cache in the model dtype (--kv-cache-dtype auto: bf16), K and V per layer, KV heads split "
        f"over tensor-parallel ranks, in blocks of {block} tokens",
        f"the profiling pass runs {profiled} tokens (max_num_batched_tokens; chunked prefill is on by "
        "default), activations as for FastDeploy's estimate",
        f"{runtime_gib:g} GiB per GPU for CUDA graphs ({VLLM_CUDA_GRAPH_ALLOWANCE_GIB:g}; vLLM measures the "
        f"graph pool and subtracts it) and non-torch memory ({VLLM_NON_TORCH_ALLOWANCE_GIB:g}: NCCL, "
        "cuBLAS): allowances, not measured here",
        "KV cache = memory x gpu_memory_utilization - weights - activations - that allowance (vLLM's "
        "determine_available_memory); vLLM's own default utilization is 0.92",
    ]


def _why_not(p: ServePlan) -> str:
    if p.kv_free_gib <= 0:
        return f"weights+activations+runtime exceed the {p.budget_gib:.1f} GiB budget"
    return f"KV cache holds {p.kv_capacity_tokens:,} tokens < {p.max_num_seqs} x {p.max_model_len}"


def plan_serve(
    model: ModelSpec | str,
    gpu: GpuSpec | str,
    gpus: int | None = None,
    quantization: str | None = None,
    max_model_len: int = FD_MAX_MODEL_LEN,
    max_num_seqs: int = FD_MAX_NUM_SEQS,
    gpu_memory_utilization: float = FD_GPU_MEMORY_UTILIZATION,
    tensor_parallel: int | None = None,
    engine: str = "fastdeploy",
    max_num_batched_tokens: int | None = None,
) -> ServePlan:
    """Plan a FastDeploy (or, with `engine="vllm"`, a vLLM) deployment.

    tensor_parallel (or else `gpus`) fixes the TP size; with neither, the smallest TP in 1/2/4/8
    that fits is chosen. Without `quantization`, every precision the GPU and checkpoint allow is
    tried: fewest GPUs first, then lowest precision loss. Unsupported combinations raise UserError.
    """
    m, g = _resolve(model, gpu)
    if max_model_len < 1 or max_num_seqs < 1:
        raise UserError("max_model_len and max_num_seqs must be positive")
    if not 0 < gpu_memory_utilization <= 1:
        raise UserError(f"gpu_memory_utilization {gpu_memory_utilization} must be in (0, 1]")
    if max_model_len > m.max_context:
        raise UserError(f"max_model_len {max_model_len} is beyond {m.name}'s context of {m.max_context}")
    tp = tensor_parallel or gpus
    if tp is not None and tp < 1:
        raise UserError(f"tensor parallel size {tp} must be at least 1")
    if engine not in ENGINES:
        raise UserError(f"engine {engine!r} has no memory model here", hint=f"one of: {', '.join(ENGINES)}")
    order = VLLM_LOSS_ORDER if engine == "vllm" else LOSS_ORDER
    quants = [normalize_quantization(quantization)] if quantization else list(order)
    if engine == "vllm" and quants[0] not in VLLM_QUANTIZATIONS:
        raise UserError(
            f"vLLM has no online equivalent of {quants[0]} for a bf16 checkpoint (FastDeploy's weight-only "
            "formats)",
            hint="plan vLLM with bf16 or block_wise_fp8 (fp8), or plan FastDeploy (--engine fastdeploy)",
        )
    if quantization:
        why = unsupported(m, g, quants[0], tp)
        if why:
            raise UserError(why, hint=_alternative_hint(quants[0]))
    if tp:
        tps = [tp]
    elif quantization and quants[0] in FIXED_TP:
        tps = [FIXED_TP[quants[0]]]
    else:
        tps = [t for t in TP_CHOICES if m.num_heads % t == 0]
    considered: list[dict[str, Any]] = []
    best: ServePlan | None = None  # nothing fits: the last tried (most GPUs, least memory)
    for t in tps:
        for q in quants:
            why = unsupported(m, g, q, t)
            if why:
                if not quantization:
                    continue
                raise UserError(why)
            plan = _plan_one(
                m,
                g,
                q,
                t,
                max_model_len,
                max_num_seqs,
                gpu_memory_utilization,
                engine,
                max_num_batched_tokens,
            )
            best = plan
            considered.append(
                {
                    "tensor_parallel": t,
                    "quantization": q,
                    "fits": plan.fits,
                    "why": "" if plan.fits else _why_not(plan),
                }
            )
            if plan.fits:
                plan.considered = considered if not quantization else []
                return plan
    if best is None:
        raise UserError(f"no tensor-parallel size in {TP_CHOICES} splits {m.num_heads} attention heads")
    best.considered = considered if not quantization else []
    return best


def _alternative_hint(q: str) -> str:
    if q == "block_wise_fp8":
        return "use wint8 (about the same memory) on this GPU"
    if q == "w4afp8":
        return "use wint4 (about the same memory; on any supported GPU) or, on a dense model, block_wise_fp8"
    if q in PRE_QUANTIZED:
        return "use wint4 or wint8 (online quantization from the BF16 checkpoint)"
    return "pick a TP size that divides the attention heads (1, 2, 4 or 8)"


def min_gpus(
    model: ModelSpec | str,
    gpu: GpuSpec | str,
    quantization: str,
    max_model_len: int = FD_MAX_MODEL_LEN,
    max_num_seqs: int = FD_MAX_NUM_SEQS,
    gpu_memory_utilization: float = FD_GPU_MEMORY_UTILIZATION,
) -> int | None:
    """The smallest TP in 1/2/4/8 that fits; None when unsupported or nothing up to 8 fits."""
    m, g = _resolve(model, gpu)
    q = normalize_quantization(quantization)
    for t in (FIXED_TP[q],) if q in FIXED_TP else TP_CHOICES:
        if unsupported(m, g, q, t):
            if unsupported(m, g, q, None):
                return None
            continue
        if _plan_one(m, g, q, t, max_model_len, max_num_seqs, gpu_memory_utilization).fits:
            return t
    return None


# --- training --------------------------------------------------------------------------------

# AdamW in ERNIEKit/PaddleNLP mixed precision (O2, amp_master_grad): bf16 weights (2), fp32 master
# gradients (4; bf16 2 without amp_master_grad), fp32 master weights + two moments (4 + 4 + 4).
TRAIN_WEIGHT_BYTES = 2
TRAIN_GRAD_BYTES_MASTER = 4
TRAIN_GRAD_BYTES = 2
TRAIN_OPTIMIZER_BYTES = 12
# Training activations per token per layer, bf16, with flash attention (no s^2 term): the
# attention block keeps its input, norm output, q/k/v, attention output (~ 5 hidden + qkv); the
# FFN keeps norm output, gate+up and the SwiGLU output per active expert (h + 3 I). After
# Korthikanti et al. 2022 ("Reducing Activation Recomputation", 34 s b h per layer for GPT),
# adapted to SwiGLU/GQA/MoE.
TRAIN_USABLE_FRACTION = 0.92  # CUDA context, NCCL buffers and allocator fragmentation take the rest
LORA_TARGETS = "q/k/v/o and up_gate/down projections (dense, shared and routed experts)"
TRAIN_QUANT_BYTES = {"bf16": (2.0, 2.0), "fp16": (2.0, 2.0), "wint8": (1.0, 1.0), "wint4/8": (1.0, 0.5)}


@dataclass
class TrainPlan:
    model: str
    gpu: str
    gpus: int
    gpu_memory_gib: float
    method: str
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    sharding: str
    sharding_degree: int
    max_seq_len: int
    batch_size: int
    recompute: bool
    total_params_b: float
    trainable_params_b: float
    budget_gib: float
    per_gpu_gib: dict[str, float]
    fits: bool
    reason: str = ""
    assumptions: list[str] = field(default_factory=list)

    @property
    def total_gib(self) -> float:
        return sum(self.per_gpu_gib.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_gib"] = self.total_gib
        return data

    def explain(self) -> str:
        rows = [
            ("GPUs", f"{self.gpus} x {self.gpu} ({self.gpu_memory_gib:.1f} GiB each)"),
            ("method", self.method),
            ("parallel", f"TP {self.tensor_parallel} x PP {self.pipeline_parallel} x DP "
                         f"{self.data_parallel}, sharding {self.sharding} over {self.sharding_degree}"),
            ("tokens / micro-batch", f"{self.batch_size} x {self.max_seq_len}, recompute {self.recompute}"),
            ("parameters", f"{self.total_params_b:.2f}B, trainable {self.trainable_params_b:.3f}B"),
        ]  # fmt: skip
        rows += [(f"  {k}", f"{v:8.2f} GiB / GPU") for k, v in self.per_gpu_gib.items()]
        rows += [
            ("total / GPU", f"{self.total_gib:.2f} GiB of {self.budget_gib:.2f} GiB usable "
                            f"({TRAIN_USABLE_FRACTION:g} x {self.gpu_memory_gib:.1f})"),
            ("verdict", "FITS" if self.fits else f"DOES NOT FIT: {self.reason}"),
        ]  # fmt: skip
        width = max(len(r[0]) for r in rows)
        lines = [f"{self.model}: training plan", *(f"  {k.ljust(width)}  {v}" for k, v in rows)]
        lines += [f"  assumes: {a}" for a in self.assumptions]
        return "\n".join(lines)


def lora_params(m: ModelSpec, rank: int) -> int:
    """LoRA A (in x r) + B (r x out) on every attention and MLP projection."""
    h, q, kv = m.hidden_size, m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    attn = rank * ((h + q) + (h + kv) * 2 + (q + h))
    mlp = lambda inter: rank * ((h + 2 * inter) + (inter + h))  # noqa: E731 (up_gate fused, down)
    dense_layers = m.moe_layer_start if m.is_moe else m.num_layers
    total = m.num_layers * attn + dense_layers * mlp(m.intermediate_size)
    per_moe_layer = m.num_shared_experts * mlp(m.moe_intermediate_size) + m.num_experts * mlp(
        m.moe_intermediate_size
    )
    if m.num_vision_experts and m.vision_moe_intermediate_size:
        per_moe_layer += m.num_vision_experts * mlp(m.vision_moe_intermediate_size)
    return total + m.num_moe_layers * per_moe_layer


def _layer_activation_bytes_per_token(m: ModelSpec) -> float:
    h = m.hidden_size
    q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    attn = 5 * h + q + 2 * kv + q
    if m.is_moe:
        ffn = m.experts_per_token * (h + 3 * m.moe_intermediate_size)
        ffn += m.num_shared_experts * 3 * m.moe_intermediate_size
    else:
        ffn = h + 3 * m.intermediate_size
    return (attn + ffn) * BF16


def _as_int(values: dict[str, Any], key: str, default: int) -> int:
    try:
        return int(values.get(key, default))
    except (TypeError, ValueError):
        raise UserError(f"{key} must be an integer, got {values.get(key)!r}") from None


def _as_bool(values: dict[str, Any], key: str, default: bool) -> bool:
    value = values.get(key, default)
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def plan_train(
    recipe_values: dict[str, Any], model: ModelSpec | str, gpus: int, gpu: GpuSpec | str
) -> TrainPlan:
    m, g = _resolve(model, gpu)
    v = recipe_values
    if gpus < 1:
        raise UserError(f"--gpus {gpus} must be at least 1")
    tp = max(1, _as_int(v, "tensor_parallel_degree", 1))
    pp = max(1, _as_int(v, "pipeline_parallel_degree", 1))
    seq = _as_int(v, "max_seq_len", 4096)
    batch = max(1, _as_int(v, "batch_size", _as_int(v, "per_device_train_batch_size", 1)))
    recompute = _as_bool(v, "recompute", False)
    lora = str(v.get("fine_tuning", "Full")).lower() == "lora"
    stage = str(v.get("stage", "SFT")).upper()
    compute = str(v.get("compute_type", "bf16")).lower()
    amp_master = _as_bool(v, "amp_master_grad", False)
    offload = _as_bool(v, "tensorwise_offload_optimizer", False) or _as_bool(v, "offload_optim", False)
    sharding = str(v.get("sharding", "stage1") or "").split()[0] if v.get("sharding") else "none"
    dp = max(1, gpus // (tp * pp))
    sd = _as_int(v, "sharding_parallel_degree", -1)
    sdeg = dp if sd < 1 else min(sd, dp)
    method = f"{stage} {'LoRA' if lora else 'full'}" + (
        f" on a {compute} base" if compute not in ("bf16", "fp16") else ""
    )

    p = count_params(m)
    mp = tp * pp
    total = p.total
    trainable = lora_params(m, _as_int(v, "lora_rank", 8)) if lora else total
    dense_b, expert_b = TRAIN_QUANT_BYTES.get(compute, (2.0, 2.0))
    if not lora:
        dense_b = expert_b = TRAIN_WEIGHT_BYTES  # full fine-tuning trains bf16 weights
    base = (
        p.linear_dense * dense_b + p.experts * expert_b + (p.embeddings + p.gates + p.vision_encoder) * BF16
    ) / mp
    stage3 = sharding == "stage3"
    stage2 = sharding in ("stage2", "stage3")
    staged = sharding.startswith("stage")
    per: dict[str, float] = {}
    per["weights"] = base / (sdeg if stage3 else 1)
    if lora:
        per["LoRA adapter weights (bf16)"] = trainable * TRAIN_WEIGHT_BYTES / mp
    grad_b = TRAIN_GRAD_BYTES_MASTER if amp_master else TRAIN_GRAD_BYTES
    per["gradients"] = trainable * grad_b / mp / (sdeg if stage2 else 1)
    per["optimizer (fp32 master + AdamW m, v)"] = (
        0.0 if offload else trainable * TRAIN_OPTIMIZER_BYTES / mp / (sdeg if staged else 1)
    )
    if stage == "DPO" and not lora:
        per["DPO reference model (bf16)"] = total * BF16 / mp
    layer_tok = _layer_activation_bytes_per_token(m)
    tokens = seq * batch
    layers = m.num_layers / pp
    in_flight = min(pp, max(1, _as_int(v, "gradient_accumulation_steps", 1)))  # 1F1B: pp micro-batches
    if recompute:
        acts = tokens * (layers * in_flight * m.hidden_size * BF16 + layer_tok) / tp
    else:
        acts = tokens * layers * in_flight * layer_tok / tp
    sparse = _as_bool(v, "use_sparse_head_and_loss_fn", False)
    logits = tokens * m.vocab_size * 4 / tp * (0.5 if sparse else 1.0)
    per["activations"] = acts
    per["logits (fp32)"] = logits
    per = {k: b / GIB for k, b in per.items()}
    budget = g.memory_gib * TRAIN_USABLE_FRACTION

    reason = ""
    if gpus % mp:
        reason = f"tensor_parallel_degree {tp} x pipeline_parallel_degree {pp} = {mp} does not divide "
        reason += f"{gpus} GPU(s)"
    elif sum(per.values()) > budget:
        reason = f"needs {sum(per.values()):.1f} GiB per GPU, {budget:.1f} GiB usable"
    base_note = f"base {compute}: dense {dense_b:g} B, experts {expert_b:g} B; " if lora else ""
    grads_note = "fp32 master (amp_master_grad)" if amp_master else "bf16"
    acts_note = (
        "recompute: one hidden state per layer kept, one layer recomputed" if recompute else "all kept"
    )
    logits_note = "about half the tokens (sparse head: answer tokens only)" if sparse else "every token"
    lora_note = f"LoRA rank {_as_int(v, 'lora_rank', 8)} on {LORA_TARGETS}"
    assumptions = [
        f"weights bf16 (2 B); {base_note}gradients {grads_note}; AdamW fp32 master + m + v (12 B)",
        f"sharding {sharding}: stage1 splits optimizer states, stage2 also gradients, stage3 also weights, "
        f"over {sdeg} rank(s); TP x PP splits everything by {mp}",
        "optimizer states offloaded to host RAM (tensorwise_offload_optimizer/offload_optim)"
        if offload
        else "optimizer states on the GPU",
        f"activations: {acts_note}; {in_flight} micro-batch(es) in flight per pipeline stage, split over TP",
        f"logits fp32 for {logits_note}",
        lora_note if lora else "full fine-tuning: every parameter trains",
        f"{(1 - TRAIN_USABLE_FRACTION):.0%} of each GPU left for CUDA context, NCCL and fragmentation",
    ]
    if p.inferred:
        assumptions.append(p.inferred)
    if offload:
        host = trainable * TRAIN_OPTIMIZER_BYTES / GIB
        assumptions.append(f"host RAM for offloaded optimizer states: about {host:.0f} GiB in all")
    return TrainPlan(
        model=m.name, gpu=g.name, gpus=gpus, gpu_memory_gib=g.memory_gib, method=method,
        tensor_parallel=tp, pipeline_parallel=pp, data_parallel=dp, sharding=sharding, sharding_degree=sdeg,
        max_seq_len=seq, batch_size=batch, recompute=recompute, total_params_b=total / 1e9,
        trainable_params_b=trainable / 1e9, budget_gib=budget, per_gpu_gib=per, fits=not reason,
        reason=reason, assumptions=assumptions,
    )  # fmt: skip


def model_from_config(directory: Path) -> ModelSpec:
    """A ModelSpec from a local checkpoint's config.json (ERNIE 4.5 / ERNIE 4.5 MoE keys)."""
    path = Path(directory) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None

    def first(key: str, default: Any = 0) -> Any:
        value = cfg.get(key, default)
        return value[0] if isinstance(value, list) and value else value

    def second(key: str) -> int:
        value = cfg.get(key)
        return int(value[1]) if isinstance(value, list) and len(value) > 1 else 0

    hidden = int(cfg.get("hidden_size", 0))
    heads = int(cfg.get("num_attention_heads", 1))
    try:
        spec = ModelSpec(
            name=path.parent.name,
            architecture=(cfg.get("architectures") or ["?"])[0],
            num_layers=int(cfg["num_hidden_layers"]),
            hidden_size=hidden,
            intermediate_size=int(cfg.get("intermediate_size", 4 * hidden)),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            vocab_size=int(cfg["vocab_size"]),
            max_context=int(cfg.get("max_position_embeddings", 131072)),
            total_params_b=0.0,
            active_params_b=0.0,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            num_experts=int(first("moe_num_experts")),
            num_vision_experts=second("moe_num_experts"),
            experts_per_token=int(cfg.get("moe_k", 0)),
            num_shared_experts=int(cfg.get("moe_num_shared_experts", 0)),
            moe_intermediate_size=int(first("moe_intermediate_size")),
            vision_moe_intermediate_size=second("moe_intermediate_size"),
            moe_layer_start=int(cfg.get("moe_layer_start_index", 0) or 0)
            if cfg.get("moe_num_experts")
            else 0,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: not an ERNIE 4.5 config ({err})") from None
    from dataclasses import replace

    return replace(spec, total_params_b=count_params(spec).total / 1e9)


def resolve_model(name_or_path: str) -> ModelSpec:
    """The catalog entry, or a local directory's config.json."""
    path = Path(name_or_path)
    if path.is_dir() and (path / "config.json").is_file():
        return model_from_config(path)
    return find_model(name_or_path)
