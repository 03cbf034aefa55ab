"""`ernie-ops plan serve|train`: will it fit? GPU memory arithmetic for FastDeploy / vLLM and ERNIEKit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ernie_ops.cli.base import Subcommand
from ernie_ops.errors import UserError


class Plan(Subcommand):
    name = "plan"
    help = "GPU memory plan: does a model fit for serving (FastDeploy, vLLM) or a recipe for training"
    description = (
        "Memory arithmetic shown line by line: weights by quantization, KV cache, activations and "
        "allowances per GPU. Exit 0 when it fits, 1 when it does not, 2 on a usage error."
    )
    examples = (
        "ernie-ops plan serve --model ERNIE-4.5-21B-A3B --gpu A10-24G            # cheapest that fits",
        "ernie-ops plan serve --model ERNIE-4.5-300B-A47B --gpu H800 --gpus 4 --quantization wint4",
        "ernie-ops plan serve --model ERNIE-4.5-0.3B --gpu L20 --max-model-len 32768 --max-num-seqs 64",
        "ernie-ops plan serve --model ERNIE-4.5-21B-A3B --gpu H800 --engine vllm --quantization fp8",
        "ernie-ops plan train recipes/ERNIE-4.5-21B-A3B/sft_lora_8k.yaml --gpus 1",
        "ernie-ops plan train recipes/ERNIE-4.5-21B-A3B/sft_8k.yaml --gpus 8 --gpu H800-80G --json",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        serve = actions.add_parser(
            "serve", help="FastDeploy or vLLM serving: fits per GPU, KV capacity, cheapest config"
        )
        serve.add_argument(
            "--model", required=True, help="catalog name, hub id or a local checkpoint directory"
        )
        serve.add_argument(
            "--gpu", required=True, help="GPU type, e.g. H100-80G, H20-96G, A800-80G, L20, A10"
        )
        serve.add_argument("--gpus", type=int, help="tensor-parallel size (default: the fewest that fit)")
        serve.add_argument(
            "--quantization",
            help="bf16, wint8, wint4, wint2, block_wise_fp8 (fp8), w4a8, w4afp8 (MoE on Hopper, asked only) "
            "(default: the cheapest that fits)",
        )
        serve.add_argument("--max-model-len", type=int, default=2048, help="FastDeploy's default: 2048")
        serve.add_argument("--max-num-seqs", type=int, default=8, help="FastDeploy's default: 8")
        serve.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="default 0.9")
        serve.add_argument(
            "--engine",
            choices=("fastdeploy", "vllm"),
            default="fastdeploy",
            help="whose memory model (default fastdeploy); vllm: bf16 or fp8 only, its assumptions printed",
        )
        serve.add_argument(
            "--max-num-batched-tokens",
            type=int,
            help="vllm: tokens of the profiling pass (default: vLLM's for the GPU, 2048 / 8192 / 16384)",
        )
        serve.add_argument("--json", action="store_true", help="machine-readable output")
        train = actions.add_parser("train", help="an ERNIEKit recipe: memory per GPU and whether it fits")
        train.add_argument("recipe", type=Path, help="ERNIEKit recipe YAML")
        train.add_argument("overrides", nargs="*", metavar="key=value", help="ERNIEKit overrides")
        train.add_argument("--gpus", type=int, required=True, help="number of GPUs in the job")
        train.add_argument("--gpu", default="A800-80G", help="GPU type (default A800-80G)")
        train.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, args: argparse.Namespace) -> int:
        plan = self._serve(args) if args.action == "serve" else self._train(args)
        print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.explain())
        return 0 if plan.fits else 1

    @staticmethod
    def _serve(args: argparse.Namespace):
        from ernie_ops.serve.planner import plan_serve, resolve_model

        return plan_serve(
            resolve_model(args.model),
            args.gpu,
            gpus=args.gpus,
            quantization=args.quantization,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            gpu_memory_utilization=args.gpu_memory_utilization,
            engine=args.engine,
            max_num_batched_tokens=args.max_num_batched_tokens,
        )

    @staticmethod
    def _train(args: argparse.Namespace):
        from ernie_ops.recipe.load import load_recipe
        from ernie_ops.serve.planner import plan_train, resolve_model

        recipe, problems = load_recipe(args.recipe, args.overrides)
        if recipe is None:
            raise UserError("; ".join(p.render() for p in problems) or f"cannot read {args.recipe}")
        name = recipe.values.get("model_name_or_path") or recipe.metadata.get("model")
        if not name:
            raise UserError("the recipe has no model_name_or_path", where=str(args.recipe))
        return plan_train(recipe.values, resolve_model(str(name)), args.gpus, args.gpu)
