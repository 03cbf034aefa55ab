"""The `ernie-ops demo` task: "Even or odd: 4817" -> "odd", learned by LoRA on a tiny random model.

The task. Every prompt is `Even or odd: N` for a whole number N of 2 to 5 digits; the answer is
`even` or `odd`, N's parity. `write_demo_task` writes three files for a seed:

- `train.jsonl`  600 ERNIEKit SFT records, 60 numbers for each last digit 0-9, shuffled;
- `eval.jsonl`   the held-out numbers in ERNIEKit SFT format (ERNIEKit needs an eval file; its
                 eval_loss is then a held-out loss);
- `suite.jsonl`  the same held-out numbers as an `ernie-ops eval` suite (exact judge): 60 items,
                 6 for each last digit, so 30 even and 30 odd.

Why it is learnable in a minute of CPU. The tiny tokenizer splits digits (`split_digits`), so the
answer depends on one token, the last digit, which always sits at the same distance from the end
of the prompt (it is followed by the fixed "\\nAssistant: "). A 2-layer model only has to attend
from the last position to a fixed relative offset and map 10 digit embeddings to 2 labels; the
answers are short in the tiny tokenizer (`even` is one piece, `odd` two) and the chat format is the
one the embedded server renders (ERNIEKit trains `<|begin_of_sentence|>User: ...\\nAssistant:
...<|end_of_sentence|>` and learns to end with `</s>`, which the server stops on), so a trained
answer comes back verbatim with greedy decoding. With the settings in `DemoTask.overrides` (1000
LoRA steps at rank 16, about 10 packed examples a step, so about 17 epochs) the fine-tuned model
answered every held-out item right in every measured run; training takes about a minute of CPU
(2 shared cores), most of the rest of the demo being ERNIEKit's start-up and export.

What is measured, honestly. The suite's numbers never occur in the training data, so the score is
generalization to unseen numbers, not recall of training prompts. It is not generalization to
unseen *rules*: every last digit appears 60 times in training, and the prompt template is the same.
The random base model never produces "even" or "odd" (score about 0). Chance level is 0.5, not 0: a
model that learned the format but not the rule (always "odd", say) scores exactly 0.5 on this
balanced suite (one measured run stopped after 100 steps scored 0.51), so the suite is tagged
`even` / `odd` to show per-label scores; a score near 1 is the rule learned.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.tiny_model import TinySpec

# The tiny model to build for the demo: the default shape learns the task reliably and builds in
# seconds.
DEMO_SPEC = TinySpec()

PROMPT = "Even or odd: {n}"
LABELS = ("even", "odd")
TRAIN_PER_DIGIT = 60  # training numbers per last digit (600 in all)
HELD_OUT_PER_DIGIT = 6  # suite numbers per last digit (60 in all, half even)
MAX_TOKENS = 8  # the answer is at most 2 tokens then </s>; garbage from the base model stops here
MAX_STEPS = 1000

EVAL_STEPS = 100  # a held-out eval loss every 100 steps (60 short examples: a fraction of a second)

# Overrides of recipes/tiny/sft_lora_cpu.yaml (beside the data and model paths). Packed sequences
# of 256 tokens hold about 10 examples (each is about 25 tokens), so 1000 steps are about 17 epochs
# of train.jsonl. In the measured runs the rule was picked up between steps 100 and 400 (the
# held-out loss leaves the "format only" plateau, about 4.65, for about 4.3-4.4; the slowest seed
# left it at 300 and kept improving to 850, yet scored 1.0 after 600 steps). 1000 steps, at about
# 0.05 s a step on 2 CPU cores, leave about 2.5x margin. One checkpoint, at the end.
# The loss never nears 0 even at 100% accuracy: LoRA leaves the tied embeddings and the final norm
# frozen, which caps the logit scale of a hidden-64 model, so judge training by the eval score.
OVERRIDES: dict[str, str] = {
    "max_steps": str(MAX_STEPS),
    "learning_rate": "0.005",
    "warmup_steps": "20",
    "lora_rank": "16",
    "max_seq_len": "256",
    "num_samples_each_epoch": "6000",
    "logging_steps": "10",
    "eval_steps": str(EVAL_STEPS),
    "save_steps": str(MAX_STEPS),
}


@dataclass(frozen=True)
class DemoTask:
    """The files `write_demo_task` wrote and how to train and evaluate on them."""

    train: Path  # ERNIEKit SFT jsonl
    eval: Path  # ERNIEKit SFT jsonl (held-out numbers)
    suite: Path  # `ernie-ops eval` suite (the same held-out numbers)
    overrides: dict[str, str] = field(default_factory=dict)  # key=value for the LoRA recipe
    max_tokens: int = MAX_TOKENS  # `ernie-ops eval --max-tokens`

    def override_args(self) -> list[str]:
        """The overrides as `ernie-ops train` arguments, with the data paths set."""
        values = {
            **self.overrides,
            "train_dataset_path": str(self.train),
            "eval_dataset_path": str(self.eval),
        }
        return [f"{k}={v}" for k, v in values.items()]


def answer(n: int) -> str:
    return LABELS[n % 2]


def _numbers(rng: random.Random, last_digit: int, count: int) -> list[int]:
    """`count` distinct numbers of 2 to 5 digits (each length about equally likely) ending in
    `last_digit`."""
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < count:
        length = rng.randint(1, 4)  # digits before the last one
        n = rng.randint(10 ** (length - 1), 10**length - 1) * 10 + last_digit
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")


def _sft(n: int) -> dict[str, Any]:
    return {"src": [PROMPT.format(n=n)], "tgt": [answer(n)]}


def write_demo_task(out_dir: Path, seed: int = 0) -> DemoTask:
    """Write train.jsonl, eval.jsonl and suite.jsonl to `out_dir` (created); the same files for
    the same seed. The held-out numbers never occur in train.jsonl."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train: list[int] = []
    held_out: list[int] = []
    for digit in range(10):
        numbers = _numbers(rng, digit, TRAIN_PER_DIGIT + HELD_OUT_PER_DIGIT)
        train += numbers[:TRAIN_PER_DIGIT]
        held_out += numbers[TRAIN_PER_DIGIT:]
    rng.shuffle(train)
    rng.shuffle(held_out)

    task = DemoTask(
        train=out_dir / "train.jsonl",
        eval=out_dir / "eval.jsonl",
        suite=out_dir / "suite.jsonl",
        overrides={**OVERRIDES, "seed": str(seed)},
        max_tokens=MAX_TOKENS,
    )
    _write_jsonl(task.train, [_sft(n) for n in train])
    _write_jsonl(task.eval, [_sft(n) for n in held_out])
    suite = [
        {
            "id": f"parity-{i:02d}",
            "prompt": PROMPT.format(n=n),
            "expected": answer(n),
            "judge": "exact",
            "tags": [answer(n)],
        }
        for i, n in enumerate(held_out)
    ]
    _write_jsonl(task.suite, suite)
    return task
