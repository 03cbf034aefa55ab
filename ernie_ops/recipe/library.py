"""The recipe library: every shipped recipe, defined once here and rendered as plain ERNIEKit YAML.

Settings follow ERNIEKit's published examples (PaddlePaddle/ERNIE `examples/configs/<model>/`),
composed from shared blocks so that one setting is written once; deviations say why in
`DEVIATIONS`. `scripts/gen_recipes.py` writes `recipes/`; a test asserts the files equal what
`render` produces, and that each passes `ernie-ops check`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.errors import UserError, did_you_mean

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
SEQS = (8192, 32768)
GPU_GB = 80  # the minimum-GPU figures assume 80 GB cards, as ERNIEKit's documentation does
TRAIN = {"sft": "recipes/data/sft-train.jsonl", "dpo": "recipes/data/dpo-train.jsonl"}
EVAL = {"sft": "recipes/data/sft-eval.jsonl", "dpo": "recipes/data/dpo-eval.jsonl"}
VL_TRAIN = "recipes/data/vl-sft-train.jsonl"
FC_TRAIN = "recipes/data/function-call-train.jsonl"
FC_EVAL = "recipes/data/function-call-eval.jsonl"

# --- shared blocks --------------------------------------------------------------------------

TEXT_COMMON: dict[str, Any] = {
    "train_dataset_type": "erniekit",
    "train_dataset_prob": "1.0",
    "eval_dataset_type": "erniekit",
    "eval_dataset_prob": "1.0",
    "fuse_rope": True,
    "do_train": True,
    "do_eval": True,
    "batch_size": 1,
    "num_train_epochs": 1,
    "max_evaluate_steps": 10000,
    "logging_steps": 1,
    "release_grads": True,
    "logging_dir": "./vdl_log",
    "output_dir": "./output",
    "disable_tqdm": True,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.1,
    "adam_epsilon": 1.0e-8,
    "adam_beta1": 0.9,
    "adam_beta2": 0.95,
    "tensor_parallel_degree": 1,
    "pipeline_parallel_degree": 1,
    "sharding": "stage1",
    "recompute": False,
    "recompute_use_reentrant": True,
    "compute_type": "bf16",
    "fp16_opt_level": "O2",
    "amp_master_grad": True,
    "amp_custom_white_list": [
        "lookup_table",
        "lookup_table_v2",
        "flash_attn",
        "matmul",
        "matmul_v2",
        "fused_gemm_epilogue",
    ],
    "amp_custom_black_list": [
        "reduce_sum",
        "softmax_with_cross_entropy",
        "c_softmax_with_cross_entropy",
        "elementwise_div",
        "sin",
        "cos",
    ],
    "unified_checkpoint": True,
}
SFT: dict[str, Any] = {
    "stage": "SFT",
    "fine_tuning": "Full",
    "seed": 23,
    "use_sparse_head_and_loss_fn": True,
    "dataloader_num_workers": 1,
    "max_steps": -1,
    "eval_steps": 100,
    "evaluation_strategy": "steps",
    "save_steps": 100,
    "save_strategy": "steps",
    "gradient_accumulation_steps": 8,
    "warmup_steps": 20,
    "learning_rate": 1.0e-5,
    "optim": "adamw_custom",
    "tensorwise_offload_optimizer": True,
    "pipeline_parallel_config": "enable_delay_scale_loss enable_release_grads disable_partial_send_recv",
    "disable_ckpt_quant": True,
    "unified_checkpoint_config": "ignore_merge_optimizer",
}
SFT_LORA: dict[str, Any] = {
    "fine_tuning": "LoRA",
    "lora_rank": 32,
    "learning_rate": 1.0e-4,
    "pipeline_parallel_config": "disable_partial_send_recv enable_clear_every_step_cache",
}
DPO: dict[str, Any] = {
    "stage": "DPO",
    "fine_tuning": "Full",
    "seed": 42,
    "num_samples_each_epoch": 6000000,
    "distributed_dataloader": True,
    "dataloader_num_workers": 4,
    "max_steps": 800,
    "eval_steps": 20000,
    "evaluation_strategy": "epoch",
    "save_steps": 100,
    "save_total_limit": 5,
    "save_strategy": "epoch",
    "gradient_accumulation_steps": 36,
    "warmup_steps": 50,
    "learning_rate": 5.0e-7,
    "min_lr": 5.0e-7,
    "layerwise_lr_decay_bound": 0.5,
    "attention_probs_dropout_prob": 0.1,
    "dropout_warmup_steps": 100,
    "offset_alpha": 0.1,
    "scale_loss": 8192,
    "offload_optim": True,
    "use_sp_callback": True,
    "tensor_parallel_config": "sync_param sync_grad sync_moment",
    "sharding_parallel_degree": 1,
    "sequence_parallel": True,
    "pipeline_parallel_config": (
        "disable_partial_send_recv enable_clear_every_step_cache enable_delay_scale_loss "
        "enable_overlap_p2p_comm best_unbalanced_scheduler"
    ),
    "unified_checkpoint_config": "async_save",
}
DPO_LORA: dict[str, Any] = {
    "fine_tuning": "LoRA",
    "lora_rank": 32,
    "lora_alpha": 128,
    "rslora": True,
    "lora_plus_scale": 12,
}
WINT4 = {"compute_type": "wint4/8"}  # weight-only INT4 experts + INT8 dense layers, LoRA on top
MOE = {"moe_group": "mp", "sequence_parallel": True, "use_sp_callback": True, "recompute": True}

VL_SFT: dict[str, Any] = {  # ERNIE-4.5-VL examples (ERNIEKit >= 1.3: stage VL-SFT)
    "stage": "VL-SFT",
    "fine_tuning": "Full",
    "train_dataset_type": "erniekit",
    "train_dataset_prob": "1.0",
    "text_dataset_path": "",
    "text_dataset_prob": "",
    "num_samples_each_epoch": 10000000,
    "modality_ratio": "[1,1]",
    "variable_resolution": 1,
    "render_timestamp": True,
    "serialize_output": False,
    "one_sample_in_one_seq": True,
    "multimodal": True,
    "use_moe": True,
    "fuse_linear": True,
    "fuse_rms_norm": False,
    "use_flash_attention": True,
    "use_sparse_head_and_loss_fn": False,
    "use_recompute_loss_fn": False,
    "moe_group": "mp",
    "moe_use_aux_free_update_coef": 0.0,
    "moe_aux_loss_lambda": 0.0,
    "moe_use_aux_free": True,
    "moe_use_hard_gate": True,
    "moe_multimodal_dispatch_use_allgather": "v2-alltoall-unpad-text",
    "dataloader_num_workers": 1,
    "prefetch_factor": 10,
    "do_train": True,
    "batch_size": 1,
    "seed": 42,
    "gradient_accumulation_steps": 4,
    "max_steps": 8000,
    "save_steps": 10000,
    "logging_steps": 1,
    "output_dir": "./output",
    "add_sys_token": True,
    "same_data": True,
    "freeze_config": "freeze_vision",
    "trigger_data_prob": 1.0,
    "from_scratch": 0,
    "load_sharded_model": True,
    "save_sharded_model": True,
    "gc_interval": 100000,
    "drop_history_with_k": True,
    "overwrite_output_dir": True,
    "lr_scheduler_type": "cosine",
    "learning_rate": 1.0e-5,
    "min_lr": 1.0e-6,
    "weight_decay": 0.1,
    "warmup_steps": 100,
    "moe_gate_lr_ratio": 0.01,
    "visual_ld": 0.9,
    "vit_lr_ratio": 0.9,
    "adam_beta1": 0.9,
    "adam_beta2": 0.95,
    "adam_epsilon": 1.0e-8,
    "scale_loss": 4096,
    "sequence_parallel": True,
    "use_sp_callback": True,
    "tensor_parallel_degree": 4,
    "pipeline_parallel_degree": 2,
    "pp_need_data": True,
    "pp_need_data_degree": 2,
    "virtual_pp_degree": 1,
    "tensor_parallel_config": "sync_param sync_grad sync_moment",
    "pipeline_parallel_config": (
        "enable_offload_queue enable_delay_scale_loss enable_overlap_p2p_comm best_unbalanced_scheduler"
    ),
    "disable_pipeline_warmup": False,
    "sharding": "stage1",
    "sharding_parallel_config": "split_param enable_fuse_optimizer_states",
    "sharding_comm_buffer_size_MB": 2048,
    "save_sharding_stage1_model_include_freeze_params": True,
    "offload_optim": True,
    "use_recompute_moe": True,
    "recompute": True,
    "recompute_granularity": "full",
    "pre_alloc_memory": 60,
    "fp16_opt_level": "O2",
    "amp_master_grad": True,
    "unified_checkpoint": True,
}
VL_LORA = {
    "fine_tuning": "LoRA",
    "lora_rank": 32,
    "learning_rate": 3.0e-4,
    "tensor_parallel_degree": 2,
    "tensorwise_offload_optimizer": True,
    "unified_checkpoint_config": "ignore_merge_optimizer",
    "load_sharded_model": None,  # None: drop the key (LoRA examples do not set it)
    "save_sharded_model": None,
}
VL_LONG = {"use_sparse_head_and_loss_fn": True, "use_recompute_loss_fn": True}

# ERNIE-4.5-21B-A3B-Thinking examples (ERNIEKit >= 1.3: Thinking SFT and function-call SFT);
# their layout differs from the 21B-A3B ones: TP 4 x PP 2, a 100-step demo length, offloaded optimizer.
THINKING_SFT: dict[str, Any] = {
    "stage": "SFT",
    "fine_tuning": "Full",
    "seed": 23,
    "moe_group": "mp",
    "use_sparse_head_and_loss_fn": True,
    "num_samples_each_epoch": 6000000,
    "distributed_dataloader": False,
    "dataloader_num_workers": 1,
    "max_steps": 100,
    "eval_steps": 10000,
    "evaluation_strategy": "steps",
    "save_steps": 10000000,
    "save_total_limit": 5,
    "save_strategy": "steps",
    "gradient_accumulation_steps": 8,
    "warmup_steps": 20,
    "learning_rate": 1.0e-5,
    "min_lr": 1.0e-6,
    "layerwise_lr_decay_bound": 1.0,
    "offload_optim": True,
    "tensor_parallel_degree": 4,
    "pipeline_parallel_degree": 2,
    "sharding_parallel_degree": 1,
    "sequence_parallel": True,
    "pipeline_parallel_config": "enable_delay_scale_loss enable_release_grads disable_partial_send_recv",
    "recompute": True,
    "disable_ckpt_quant": True,
    "optim": None,  # None: drop the key (the Thinking examples keep the defaults)
    "tensorwise_offload_optimizer": None,
    "unified_checkpoint_config": None,
}
THINKING_LORA: dict[str, Any] = {
    "fine_tuning": "LoRA",
    "lora_rank": 32,
    "learning_rate": 3.0e-4,
    "tensor_parallel_degree": 1,
    "pipeline_parallel_degree": 1,
    "pipeline_parallel_config": "disable_partial_send_recv enable_clear_every_step_cache",
    "unified_checkpoint_config": "async_save",
}
THINKING_LORA_LONG = {"tensor_parallel_degree": 2, "pipeline_parallel_degree": 2}  # the 32K example
FC: dict[str, Any] = {  # function-call SFT: ERNIEKit's chatml reader (messages + tools records)
    "train_dataset_path": FC_TRAIN,
    "eval_dataset_path": FC_EVAL,
    "train_dataset_type": "chatml",
    "eval_dataset_type": "chatml",
    "max_steps": 10,
    "max_evaluate_steps": 10,
}
THINKING_DATA_NOTE = (
    "train/eval_dataset_type erniekit on recipes/data (src/tgt), not the example's messages type "
    "with split_multi_turn: the messages reader is not in the ERNIEKit sources ernie-ops reads, "
    "so its record format is not checked; point both at your own data"
)
FC_DATA_NOTE = (
    "recipes/data/function-call-*.jsonl: a few records in the messages + tools shape of ERNIEKit's "
    "chatml reader (ernie/dataset/finetuning.py process_fc), for the check and a smoke run only"
)
VL_THINKING = {"chat_template": "ernie_vl_thinking", "load_sharded_model": None, "save_sharded_model": None}

# The CPU settings the tiny recipes need (see shared reference: each was a failure until set).
CPU: dict[str, Any] = {
    "use_flash_attention": False,
    "use_attn_mask_start_row_indices": False,
    "fuse_rms_norm": False,
    "fuse_rope": False,
    "fuse_linear": False,
    "fuse_swiglu": False,
    "moe_group": "dummy",
    "device": "cpu",
    "report_to": "none",  # VisualDL's add_hparams crashes on boolean hyper-parameters
}
TINY: dict[str, Any] = {
    "train_dataset_type": "erniekit",
    "train_dataset_prob": "1.0",
    "eval_dataset_type": "erniekit",
    "eval_dataset_prob": "1.0",
    "max_seq_len": 256,
    "num_samples_each_epoch": 6000,
    "model_name_or_path": "runs/tiny-dense",
    **CPU,
    "seed": 23,
    "do_train": True,
    "do_eval": True,
    "max_steps": 4,
    "batch_size": 1,
    "gradient_accumulation_steps": 1,
    "learning_rate": 1.0e-3,
    "warmup_steps": 0,
    "logging_steps": 1,
    "eval_steps": 4,
    "evaluation_strategy": "steps",
    "save_steps": 4,
    "save_strategy": "steps",
    "disable_tqdm": True,
    # resume on CPU needs it: without it ERNIEKit saves model.safetensors but resumes from
    # model_state.pdparams ("Can't find a valid checkpoint"); the GPU recipes set it too
    "unified_checkpoint": True,
}

OFFSET_NOTE = (
    "offset_alpha 0.1, not the examples' 0.0: ERNIEKit 1.0.1's DPO loss fails at 0.0 "
    "(ValueError: too many values to unpack, seen on CPU)"
)
PP_SEG_NOTE = (
    "pp_seg_method left at its default: the examples' per-stage layer list (a YAML list, which "
    "ERNIEKit hands to Paddle's PipelineLayer as it is) was not carried over"
)


# --- the library ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    model: str  # catalog name, or "tiny"
    method: str  # sft | sft-lora | sft-wint4-lora | dpo | dpo-lora | dpo-wint4-lora | fc | fc-lora
    seq: int
    settings: dict[str, Any] = field(hash=False)
    documented_min_gpus: int = 1  # ERNIEKit's documented minimum (80 GB cards), when it gives one
    erniekit: str | None = None  # version range the recipe needs, when newer than the pinned one
    notes: tuple[str, ...] = ()  # where the settings deviate from ERNIEKit's examples, and why
    hub: str | None = None  # the hub id when it is not baidu/<model>-Paddle (the Thinking models)

    @property
    def min_gpus(self) -> int:
        """The smallest GPU count that is a multiple of TP x PP and at least the documented minimum."""
        ranks = math.prod(
            max(1, int(self.settings.get(k, 1)))
            for k in ("tensor_parallel_degree", "pipeline_parallel_degree", "sharding_parallel_degree")
        )
        return ranks * math.ceil(self.documented_min_gpus / ranks)

    @property
    def deviations(self) -> tuple[str, ...]:
        offset = (OFFSET_NOTE,) if self.model != "tiny" and self.settings.get("stage") == "DPO" else ()
        return offset + self.notes

    @property
    def path(self) -> Path:
        if self.model == "tiny":
            return RECIPES_DIR / "tiny" / f"{self.method.replace('-', '_')}_cpu.yaml"
        return RECIPES_DIR / self.model / f"{self.method.replace('-', '_')}_{self.seq // 1024}k.yaml"

    @property
    def hub_id(self) -> str | None:
        if self.model == "tiny":
            return None
        return self.hub or f"baidu/{self.model}-Paddle"


def _merge(*blocks: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for block in blocks:
        for key, value in block.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
    return out


def _text(model: str, method: str, seq: int, *extra: dict[str, Any]) -> dict[str, Any]:
    kind = "dpo" if method.startswith("dpo") else "sft"
    base = DPO if kind == "dpo" else SFT
    lora = (DPO_LORA if kind == "dpo" else SFT_LORA) if "lora" in method else {}
    data = {"train_dataset_path": TRAIN[kind], "eval_dataset_path": EVAL[kind], "max_seq_len": seq}
    quant = WINT4 if "wint4" in method else {}
    return _merge(
        data, {"model_name_or_path": f"baidu/{model}-Paddle"}, TEXT_COMMON, base, lora, quant, *extra
    )


def _long(seq: int, block: dict[str, Any]) -> dict[str, Any]:
    return block if seq > 8192 else {}


def build_library() -> list[Entry]:
    entries: list[Entry] = []
    add = entries.append
    recompute = {"recompute": True}
    for seq in SEQS:
        m = "ERNIE-4.5-0.3B"
        add(Entry(m, "sft", seq, _text(m, "sft", seq, _long(seq, recompute))))
        add(Entry(m, "sft-lora", seq, _text(m, "sft-lora", seq, {"weight_decay": 0.01})))
        add(Entry(m, "sft-wint4-lora", seq, _text(m, "sft-wint4-lora", seq, {"weight_decay": 0.01})))
        add(Entry(m, "dpo", seq, _text(m, "dpo", seq, _long(seq, recompute))))
        add(Entry(m, "dpo-lora", seq, _text(m, "dpo-lora", seq, _long(seq, recompute))))

        m = "ERNIE-4.5-21B-A3B"
        tp_sft = {"tensor_parallel_degree": 4 if seq > 8192 else 2}
        add(Entry(m, "sft", seq, _text(m, "sft", seq, MOE, tp_sft), documented_min_gpus=8))
        lora = {"moe_group": "mp", "recompute": True}
        add(Entry(m, "sft-lora", seq, _text(m, "sft-lora", seq, lora)))
        add(Entry(m, "sft-wint4-lora", seq, _text(m, "sft-wint4-lora", seq, lora)))
        dpo = {"tensor_parallel_degree": 4, "pipeline_parallel_degree": 2, "gradient_accumulation_steps": 8}
        add(
            Entry(
                m,
                "dpo",
                seq,
                _text(m, "dpo", seq, MOE, dpo, {"recompute": seq > 8192}),
                documented_min_gpus=8,
            )
        )
        dpo_lora = {"tensor_parallel_degree": 2 if seq > 8192 else 1, "layerwise_lr_decay_bound": 1.0}
        add(Entry(m, "dpo-lora", seq, _text(m, "dpo-lora", seq, MOE, dpo_lora)))
        wint = {"gradient_accumulation_steps": 8, "layerwise_lr_decay_bound": 1.0, "recompute": seq > 8192}
        add(Entry(m, "dpo-wint4-lora", seq, _text(m, "dpo-wint4-lora", seq, MOE, wint)))

        m = "ERNIE-4.5-300B-A47B"
        big = {"tensor_parallel_degree": 8, "pipeline_parallel_degree": 5, "use_lowprecision_moment": True}
        add(Entry(m, "sft", seq, _text(m, "sft", seq, MOE, big), documented_min_gpus=96))
        lora = {"tensor_parallel_degree": 8, "pipeline_parallel_degree": 2, "adam_beta2": 0.999}
        add(Entry(m, "sft-lora", seq, _text(m, "sft-lora", seq, MOE, lora)))
        wint = {"tensor_parallel_degree": 4, "learning_rate": 1.0e-5, "adam_beta2": 0.999}
        add(
            Entry(m, "sft-wint4-lora", seq, _text(m, "sft-wint4-lora", seq, MOE, wint), documented_min_gpus=4)
        )
        dpo = {"tensor_parallel_degree": 8, "pipeline_parallel_degree": 14}
        add(
            Entry(
                m, "dpo", seq, _text(m, "dpo", seq, MOE, dpo), documented_min_gpus=112, notes=(PP_SEG_NOTE,)
            )
        )
        big_lora: dict[str, Any] = {
            "tensor_parallel_degree": 8,
            "pipeline_parallel_degree": 2,
            "offload_optim": None,
        }
        add(Entry(m, "dpo-lora", seq, _text(m, "dpo-lora", seq, MOE, big_lora)))
        dpo_wint: dict[str, Any] = {"tensor_parallel_degree": 8, "offload_optim": None}
        add(
            Entry(
                m,
                "dpo-wint4-lora",
                seq,
                _text(m, "dpo-wint4-lora", seq, MOE, dpo_wint),
                documented_min_gpus=4,
            )
        )

        m = "ERNIE-4.5-VL-28B-A3B"
        vl = {"model_name_or_path": f"baidu/{m}-Paddle", "train_dataset_path": VL_TRAIN, "max_seq_len": seq}
        add(Entry(m, "sft", seq, _merge(vl, VL_SFT, _long(seq, VL_LONG)), erniekit=">=1.3"))
        add(Entry(m, "sft-lora", seq, _merge(vl, VL_SFT, VL_LORA, _long(seq, VL_LONG)), erniekit=">=1.3"))

    # The Thinking models (ERNIEKit >= 1.3): SFT and LoRA at 8K and 32K, function-call SFT at 8K only
    m = "ERNIE-4.5-21B-A3B-Thinking"
    hub = "baidu/ERNIE-4.5-21B-A3B-Thinking"
    for seq in SEQS:
        think = _merge(_text(m, "sft", seq), {"model_name_or_path": hub}, THINKING_SFT)
        lora = _merge(THINKING_LORA, _long(seq, THINKING_LORA_LONG))
        methods = [("sft", {}, (THINKING_DATA_NOTE,)), ("sft-lora", lora, (THINKING_DATA_NOTE,))]
        if seq == 8192:
            methods += [("fc", FC, (FC_DATA_NOTE,)), ("fc-lora", _merge(THINKING_LORA, FC), (FC_DATA_NOTE,))]
        for method, extra, notes in methods:
            add(Entry(m, method, seq, _merge(think, extra), erniekit=">=1.3", notes=notes, hub=hub))
    m = "ERNIE-4.5-VL-28B-A3B-Thinking"
    hub = "baidu/ERNIE-4.5-VL-28B-A3B-Thinking"
    for seq in SEQS:
        vl = {"model_name_or_path": hub, "train_dataset_path": VL_TRAIN, "max_seq_len": seq}
        long = _long(seq, VL_LONG)
        add(Entry(m, "sft", seq, _merge(vl, VL_SFT, VL_THINKING, long), erniekit=">=1.3", hub=hub))
        lora = _merge(vl, VL_SFT, VL_LORA, VL_THINKING, long)
        add(Entry(m, "sft-lora", seq, lora, erniekit=">=1.3", hub=hub))

    tiny_sft = {"train_dataset_path": TRAIN["sft"], "eval_dataset_path": EVAL["sft"], **TINY}
    add(
        Entry(
            "tiny",
            "sft",
            256,
            _merge(tiny_sft, {"stage": "SFT", "fine_tuning": "Full", "output_dir": "runs/tiny-sft"}),
        )
    )
    add(
        Entry(
            "tiny",
            "sft-lora",
            256,
            _merge(
                tiny_sft,
                {"stage": "SFT", "fine_tuning": "LoRA", "lora_rank": 8, "output_dir": "runs/tiny-sft-lora"},
            ),
        )
    )
    tiny_dpo = {
        "train_dataset_path": TRAIN["dpo"],
        "eval_dataset_path": EVAL["dpo"],
        **TINY,
        "stage": "DPO",
        "fine_tuning": "LoRA",
        "lora_rank": 8,
        "offset_alpha": 0.1,
        # ERNIEKit's DPO evaluation wraps the reference model for fleet: not in one CPU process
        "do_eval": False,
        "evaluation_strategy": "no",
        "output_dir": "runs/tiny-dpo-lora",
    }
    add(Entry("tiny", "dpo-lora", 256, tiny_dpo))
    return entries


LIBRARY = build_library()


# `recipes new --model tiny` trains on the user's data, so it runs long enough to learn: one epoch
# of it, and never fewer steps than the demo task needed (600 records; the rule was learnt between
# steps 100 and 400, every held-out item answered right from step 600 on). The library's tiny
# recipes run 4 steps: they test the stack, and learn nothing.
TINY_NEW_MIN_STEPS = 600


def tiny_length(settings: dict[str, Any]) -> dict[str, int]:
    """max_steps (with one checkpoint at the end and ten evaluations) for a tiny recipe on this data."""
    from ernie_ops.recipe.length import epoch_steps
    from ernie_ops.train.run import fingerprint

    records = sum(f.records or 0 for f in fingerprint(settings) if f.split == "train")
    steps = max(TINY_NEW_MIN_STEPS, epoch_steps(settings, records) if records else 0)
    return {"max_steps": steps, "save_steps": steps, "eval_steps": max(steps // 10, 1)}


def find_entry(model: str, method: str, seq: int) -> Entry:
    from ernie_ops.catalog import find_model

    name = "tiny" if model == "tiny" else find_model(model).name
    models = sorted({e.model for e in LIBRARY})
    if name not in models:
        raise UserError(f"no recipes for {name}", hint=f"the library has: {', '.join(models)}")
    methods = sorted({e.method for e in LIBRARY if e.model == name})
    if method not in methods:
        guess = did_you_mean(method, methods)
        raise UserError(
            f"no {method!r} recipe for {name}",
            hint=(f"did you mean {guess!r}? " if guess else "") + f"methods: {', '.join(methods)}",
        )
    for e in LIBRARY:
        if (e.model, e.method) == (name, method) and (e.seq == seq or name == "tiny"):
            return e
    seqs = sorted({e.seq for e in LIBRARY if e.model == name})
    raise UserError(
        f"no {seq}-token recipe for {name} {method}", hint=f"--seq one of {', '.join(map(str, seqs))}"
    )
