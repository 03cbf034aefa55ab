from __future__ import annotations

import argparse
from pathlib import Path

from ernie_ops.cli.base import Subcommand


class TinyModel(Subcommand):
    name = "tiny-model"
    help = "write a tiny random ERNIE 4.5 checkpoint that ERNIEKit trains on CPU"
    description = (
        "Write a tiny random ERNIE 4.5 checkpoint (Paddle format, ERNIEKit parameter names, a locally "
        "trained sentencepiece tokenizer with ERNIE 4.5's special tokens and chat template). "
        "Deterministic for a seed. The MoE kind loads everywhere but ERNIEKit trains it only on GPUs "
        "(its MoE dispatch kernels are GPU-only)."
    )
    examples = (
        "ernie-ops tiny-model runs/tiny-dense",
        "ernie-ops tiny-model runs/tiny-moe --kind moe --seed 1",
        "python -m erniekit.launcher train recipes/tiny/sft_cpu.yaml model_name_or_path=runs/tiny-dense",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("out", type=Path, metavar="OUT", help="directory to write the checkpoint to")
        parser.add_argument("--kind", choices=("dense", "moe"), default="dense", help="default: dense")
        parser.add_argument("--seed", type=int, default=0, help="weights and tokenizer seed (default 0)")
        parser.add_argument("--force", action="store_true", help="replace OUT if it exists")

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.tiny_model import build_tiny_model

        out = build_tiny_model(args.out, kind=args.kind, seed=args.seed, force=args.force)
        print(out)
        return 0
