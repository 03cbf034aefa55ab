"""The values ERNIEKit's numeric arguments can take, as data: key -> Range.

The dataclasses type these keys `int` or `float` and nothing stops `max_seq_len: -5`; the ranges
come from their help texts and from what ERNIEKit / PaddleFormers do with them (ERNIEKit 1.0.1 and
1.3.0, `erniekit/hparams/*.py`, `erniekit/train/*/workflow.py`, `ernie/utils/peft_utils.py`,
`paddleformers/trainer/`). A key a version does not have is not looked at. Keys whose every value
means something (the parallel degrees: PaddleFormers takes max(degree, 1)) are not listed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # low itself is out
    high_open: bool = False
    sentinel: int | None = None  # a value outside the range with a meaning of its own
    sentinel_means: str = ""

    def admits(self, value: float) -> bool:
        if value == self.sentinel:
            return True
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        low = f"{'>' if self.low_open else '>='} {_number(self.low)}" if self.low > -math.inf else ""
        high = f"{'<' if self.high_open else '<='} {_number(self.high)}" if self.high < math.inf else ""
        text = " and ".join(p for p in (low, high) if p)
        if self.low == 0 and self.high == 1:
            text = f"in {'(' if self.low_open else '['}0, 1{')' if self.high_open else ']'}"
        if self.sentinel is not None:
            text = f"{self.sentinel} ({self.sentinel_means}) or {text}"
        return text


def _number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


POSITIVE = Range(0, low_open=True)  # > 0: rates, scales, epochs
AT_LEAST_1 = Range(1)  # counts, lengths, intervals in steps
NON_NEGATIVE = Range(0)  # weights, warm-up, workers
UNIT = Range(0, 1)  # probabilities and ratios
BETA = Range(0, 1, high_open=True)  # Adam's betas: 1 divides by zero in its bias correction

RANGES: dict[str, Range] = {
    # lengths in tokens
    "max_seq_len": AT_LEAST_1,
    "max_prompt_len": AT_LEAST_1,
    "max_new_tokens": AT_LEAST_1,
    "min_tokens": NON_NEGATIVE,
    "loss_subbatch_seqlen": AT_LEAST_1,
    "max_position_embeddings": AT_LEAST_1,
    # batches and counts
    "batch_size": AT_LEAST_1,
    "per_device_train_batch_size": AT_LEAST_1,
    "per_device_eval_batch_size": AT_LEAST_1,
    "gradient_accumulation_steps": AT_LEAST_1,
    "eval_accumulation_steps": AT_LEAST_1,
    "buffer_size": AT_LEAST_1,
    "num_samples_each_epoch": AT_LEAST_1,
    "max_estimate_samples": AT_LEAST_1,
    "num_comparisons": AT_LEAST_1,
    "dataloader_num_workers": NON_NEGATIVE,
    "optim_shard_num": AT_LEAST_1,
    "virtual_pp_degree": AT_LEAST_1,
    "hadamard_block_size": AT_LEAST_1,
    "zcc_workers_num": AT_LEAST_1,
    "zcc_ema_interval": AT_LEAST_1,
    # steps: the trainer takes `step % interval`, so 0 divides by zero
    "max_steps": Range(1, sentinel=-1, sentinel_means="as many as num_train_epochs over the data"),
    "max_evaluate_steps": Range(1, sentinel=-1, sentinel_means="the whole eval set"),
    "save_steps": AT_LEAST_1,
    "logging_steps": AT_LEAST_1,
    "eval_steps": AT_LEAST_1,
    "decay_steps": AT_LEAST_1,
    "warmup_steps": NON_NEGATIVE,
    "dropout_warmup_steps": NON_NEGATIVE,
    "num_train_epochs": POSITIVE,
    # the optimizer and the schedule
    "learning_rate": POSITIVE,
    "min_lr": NON_NEGATIVE,
    "lr_end": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "max_grad_norm": NON_NEGATIVE,
    "adam_beta1": BETA,
    "adam_beta2": BETA,
    "adam_epsilon": POSITIVE,
    "warmup_ratio": UNIT,
    "num_cycles": POSITIVE,
    "power": POSITIVE,
    "layerwise_lr_decay_bound": Range(0, 1, low_open=True),
    "scale_loss": POSITIVE,
    # numpy seeds the data order: it takes 0 .. 2**32 - 1
    "seed": Range(0, 2**32 - 1),
    # LoRA
    "lora_rank": AT_LEAST_1,
    "lora_alpha": Range(1, sentinel=-1, sentinel_means="2 x lora_rank"),
    "lora_plus_scale": POSITIVE,
    # probabilities and ratios
    "hidden_dropout_prob": UNIT,
    "attention_probs_dropout_prob": UNIT,
    "moe_dropout_prob": UNIT,
    "label_smoothing": UNIT,
    "actscale_moving_rate": UNIT,
    "zcc_pipeline_hooks_capacity_usage": Range(0, 1, low_open=True),
    "example_from_same_task_prob": UNIT,
    "pseudo_sampling_prob": UNIT,
    "trigger_data_prob": UNIT,
    "top_p": Range(0, 1, low_open=True),
    "temperature": NON_NEGATIVE,
    "repetition_penalty": POSITIVE,
    # loss weights
    "beta": POSITIVE,
    "pref_loss_ratio": NON_NEGATIVE,
    "sft_loss_ratio": NON_NEGATIVE,
    "dpop_lambda": NON_NEGATIVE,
    "moe_aux_loss_lambda": NON_NEGATIVE,
    "moe_orthogonal_loss_lambda": NON_NEGATIVE,
    "moe_z_loss_lambda": NON_NEGATIVE,
    "multi_token_pred_lambda": NON_NEGATIVE,
}
