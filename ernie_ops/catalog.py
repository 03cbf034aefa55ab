"""The ERNIE 4.5 model catalog: the architecture of every public ERNIE 4.5 model.

The planner, the recipe checks and the serve profiles read shapes from here, so a figure is only
entered with its source. Sources (abbreviated in the comments):
  [cfg]   the model's Hugging Face `config.json` (baidu/<name>-Paddle / -PT)
  [hf-tf] transformers' ERNIE 4.5 configuration defaults, documented as those of the named
          Baidu checkpoint (models/ernie4_5*, configuration_*.py)
  [card]  the model card's "Model Overview" table on Hugging Face (layers, heads, experts, context)
  [ek]    PaddlePaddle/ERNIE pre-training model_config.json for the same size (hidden, FFN, MoE)
  [vl-tf] transformers' ernie4_5_vl_moe configuration and its checkpoint converter
  [fd]    FastDeploy's docs: features/tool_calling (parser per Thinking model), the quick starts
          (--reasoning-parser ernie-45-vl for ERNIE-4.5-VL)
Where no primary source was found the figure is marked "inferred" and says from what.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ernie_ops.errors import UserError, did_you_mean

# ERNIE 4.5's published sampling defaults (generation_config.json of the public checkpoints)
GENERATION_DEFAULTS: dict[str, object] = {
    "do_sample": True,
    "top_p": 0.8,
    "temperature": 0.8,
    "repetition_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
}


@dataclass(frozen=True)
class VisionSpec:
    """The DFNRope vision encoder of the VL models."""

    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int
    spatial_merge_size: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str  # config.json `architectures[0]`, which FastDeploy dispatches on
    num_layers: int
    hidden_size: int
    intermediate_size: int  # dense FFN (and the dense layers of MoE models)
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    total_params_b: float  # billions, from the model card
    active_params_b: float
    tie_word_embeddings: bool | None = None  # None: not verified
    num_experts: int = 0  # routed experts per MoE layer (text experts for VL)
    num_vision_experts: int = 0
    experts_per_token: int = 0
    num_shared_experts: int = 0
    moe_intermediate_size: int = 0  # per text expert
    vision_moe_intermediate_size: int = 0
    moe_layer_start: int = 0  # first MoE layer; earlier layers are dense
    thinking: bool = False  # emits <think> reasoning (FastDeploy reasoning parser needed)
    reasoning_parser: str | None = None  # FastDeploy --reasoning-parser for this model [fd]
    tool_call_parser: str | None = None  # FastDeploy --tool-call-parser, where it calls tools [fd]
    vision: VisionSpec | None = None
    hub_ids: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_vl(self) -> bool:
        return self.num_vision_experts > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.moe_layer_start if self.is_moe else 0

    def kv_cache_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """K and V for every layer: what one cached token costs (bf16 by default)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kv_cache_bytes_per_token_bf16"] = self.kv_cache_bytes_per_token()
        return data


ERNIE_0_3B = ModelSpec(
    name="ERNIE-4.5-0.3B",
    architecture="Ernie4_5_ForCausalLM",  # [cfg]
    num_layers=18,  # [cfg]
    hidden_size=1024,  # [cfg]
    intermediate_size=3072,  # [cfg]
    num_heads=16,  # [cfg]
    num_kv_heads=2,  # [cfg]
    head_dim=128,  # [cfg] set explicitly (not hidden/heads = 64)
    vocab_size=103424,  # [cfg]
    max_context=131072,  # [cfg] max_position_embeddings
    total_params_b=0.36,  # [cfg] parameter count of the safetensors
    active_params_b=0.36,
    tie_word_embeddings=True,  # [cfg]
    hub_ids=("baidu/ERNIE-4.5-0.3B-Paddle", "baidu/ERNIE-4.5-0.3B-PT", "baidu/ERNIE-4.5-0.3B-Base-Paddle"),
)

ERNIE_21B = ModelSpec(
    name="ERNIE-4.5-21B-A3B",
    architecture="Ernie4_5_MoeForCausalLM",  # [cfg] (21B-A3B-Thinking repo's config)
    num_layers=28,  # [card], [hf-tf]
    hidden_size=2560,  # [hf-tf], [ek]
    intermediate_size=12288,  # [hf-tf], [ek]
    num_heads=20,  # [card] Heads(Q/KV) 20/4
    num_kv_heads=4,  # [card]
    head_dim=128,  # 2560 / 20
    vocab_size=103424,  # [hf-tf], [ek]
    max_context=131072,  # [card]
    total_params_b=21.0,  # [card]
    active_params_b=3.0,  # [card]
    tie_word_embeddings=True,  # [hf-tf], [ek]
    num_experts=64,  # [card] Text Experts 64/6
    experts_per_token=6,  # [card]
    num_shared_experts=2,  # [card] Shared Experts 2
    moe_intermediate_size=1536,  # [hf-tf], [ek]
    moe_layer_start=1,  # [hf-tf] moe_layer_start_index=1, interval 1
    hub_ids=(
        "baidu/ERNIE-4.5-21B-A3B-Paddle",
        "baidu/ERNIE-4.5-21B-A3B-PT",
        "baidu/ERNIE-4.5-21B-A3B-Base-Paddle",
    ),
)

ERNIE_300B = ModelSpec(
    name="ERNIE-4.5-300B-A47B",
    architecture="Ernie4_5_MoeForCausalLM",  # [cfg]
    num_layers=54,  # [card]
    hidden_size=8192,  # [ek]; qkv weight 8192x10240 = (64+2*8)*128
    intermediate_size=28672,  # [ek]
    num_heads=64,  # [card] Heads(Q/KV) 64/8
    num_kv_heads=8,  # [card]
    head_dim=128,  # 8192 / 64
    vocab_size=103424,  # [ek]
    max_context=131072,  # [card]
    total_params_b=300.0,  # [card]
    active_params_b=47.0,  # [card]
    num_experts=64,  # [card] Text Experts 64/8
    experts_per_token=8,  # [card]
    num_shared_experts=0,  # [ek] moe_num_shared_experts=0
    moe_intermediate_size=3584,  # [ek]
    moe_layer_start=3,  # [ek] moe_layer_start_index=3
    hub_ids=(
        "baidu/ERNIE-4.5-300B-A47B-Paddle",
        "baidu/ERNIE-4.5-300B-A47B-PT",
        "baidu/ERNIE-4.5-300B-A47B-Base-Paddle",
        "baidu/ERNIE-4.5-300B-A47B-2Bits-Paddle",
        "baidu/ERNIE-4.5-300B-A47B-W4A8C8-TP4-Paddle",
    ),
    notes=("tie_word_embeddings not verified from its config.json.",),
)

ERNIE_VL_28B = replace(
    ERNIE_21B,  # the same text backbone: 28 layers, 2560 hidden, 20/4 heads, 64 text experts top-6
    name="ERNIE-4.5-VL-28B-A3B",
    architecture="Ernie4_5_VLMoeForConditionalGeneration",  # [vl-tf] converter; FastDeploy
    total_params_b=28.0,  # [card]
    active_params_b=3.0,  # [card]
    num_vision_experts=64,  # [card] Vision Experts 64/6; moe_num_experts [64, 64]
    vision_moe_intermediate_size=512,  # [vl-tf] moe_intermediate_size [1536, 512]
    thinking=True,  # FastDeploy docs: ERNIE-VL has thinking on by default
    reasoning_parser="ernie-45-vl",  # [fd]
    vision=VisionSpec(
        depth=32,  # [vl-tf] vision_config
        hidden_size=1280,  # [vl-tf]
        num_heads=16,  # [vl-tf]
        patch_size=14,  # [vl-tf]
        spatial_merge_size=2,  # [vl-tf]
    ),
    hub_ids=(
        "baidu/ERNIE-4.5-VL-28B-A3B-Paddle",
        "baidu/ERNIE-4.5-VL-28B-A3B-PT",
        "baidu/ERNIE-4.5-VL-28B-A3B-Base-Paddle",
    ),
    notes=("Thinking on by default; switch with chat_template_kwargs.enable_thinking.",),
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ERNIE_0_3B,
        ERNIE_21B,
        replace(
            ERNIE_21B,
            name="ERNIE-4.5-21B-A3B-Thinking",
            thinking=True,
            reasoning_parser="ernie-x1",  # [fd] tool_calling: ernie-x1 for both
            tool_call_parser="ernie-x1",
            hub_ids=("baidu/ERNIE-4.5-21B-A3B-Thinking",),
            notes=(
                "Layers, heads, experts and context from its card; hidden/FFN/vocab inferred "
                "identical to ERNIE-4.5-21B-A3B (same architecture string and parameter count).",
            ),
        ),
        ERNIE_300B,
        ERNIE_VL_28B,
        replace(
            ERNIE_VL_28B,
            name="ERNIE-4.5-VL-28B-A3B-Thinking",
            reasoning_parser="ernie-45-vl-thinking",  # [fd] tool_calling: ernie-45-vl-thinking for both
            tool_call_parser="ernie-45-vl-thinking",
            hub_ids=("baidu/ERNIE-4.5-VL-28B-A3B-Thinking",),
            notes=(
                "Inferred identical to ERNIE-4.5-VL-28B-A3B (28B/3B on its card, same model class); "
                "its config.json was not checked.",
            ),
        ),
        replace(
            ERNIE_300B,  # [card] layers 54, heads 64/8, text experts 64/8, context 128K
            name="ERNIE-4.5-VL-424B-A47B",
            architecture="Ernie4_5_VLMoeForConditionalGeneration",  # served by the same VL model code
            total_params_b=424.0,  # [card]
            active_params_b=47.0,  # [card]
            num_vision_experts=64,  # [card] Vision Experts 64/8
            thinking=True,
            reasoning_parser="ernie-45-vl",  # [fd] as the other ERNIE-4.5-VL models
            hub_ids=("baidu/ERNIE-4.5-VL-424B-A47B-Paddle", "baidu/ERNIE-4.5-VL-424B-A47B-PT"),
            notes=(
                "Layers, heads, experts and context from its card; hidden, FFN, vocab, text-expert size "
                "and shared experts inferred from the 300B-A47B backbone; vision encoder figures not "
                "verified (left empty).",
            ),
        ),
    )
}


def find_model(name: str) -> ModelSpec:
    """Look a model up by catalog name or hub id (`baidu/ERNIE-4.5-21B-A3B-Paddle`), forgivingly."""
    key = name.strip().rstrip("/").split("/")[-1].lower()
    for suffix in ("-paddle", "-pt", "-base"):  # "-Base-Paddle" drops both
        key = key.removesuffix(suffix)
    for spec in MODELS.values():
        if key == spec.name.lower():
            return spec
    lowered = {n.lower(): n for n in MODELS}
    guess = lowered.get(did_you_mean(key, list(lowered)) or "")
    raise UserError(
        f"unknown ERNIE 4.5 model {name!r}",
        hint=(f"did you mean {guess!r}? " if guess else "") + "`ernie-ops models` lists them all",
    )
