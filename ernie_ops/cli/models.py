from __future__ import annotations

import argparse
import json

from ernie_ops.cli.base import Subcommand
from ernie_ops.text import format_table


class Models(Subcommand):
    name = "models"
    help = "list the ERNIE 4.5 model catalog (architecture of every public model)"
    examples = (
        "ernie-ops models",
        "ernie-ops models ERNIE-4.5-21B-A3B",
        "ernie-ops models baidu/ERNIE-4.5-VL-28B-A3B-Paddle --json",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", nargs="?", help="one model (catalog name or hub id): all its fields")
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.catalog import MODELS, find_model

        specs = [find_model(args.name)] if args.name else list(MODELS.values())
        if args.json:
            print(json.dumps([s.to_dict() for s in specs], indent=2))
        elif args.name:
            for key, value in specs[0].to_dict().items():
                print(f"{key:32} {value}")
        else:
            print(_table(specs))
        return 0


def _table(specs) -> str:
    header = (
        "model",
        "params",
        "layers",
        "hidden",
        "heads/kv",
        "experts",
        "k",
        "shared",
        "context",
        "KV/token",
    )
    rows = [header]
    for s in specs:
        experts = f"{s.num_experts}+{s.num_vision_experts}v" if s.is_vl else str(s.num_experts or "-")
        rows.append(
            (
                s.name,
                f"{s.total_params_b:g}B/{s.active_params_b:g}B",
                str(s.num_layers),
                str(s.hidden_size),
                f"{s.num_heads}/{s.num_kv_heads}",
                experts,
                str(s.experts_per_token or "-"),
                str(s.num_shared_experts if s.is_moe else "-"),
                f"{s.max_context // 1024}K",
                f"{s.kv_cache_bytes_per_token() // 1024} KiB",
            )
        )
    return format_table([list(r) for r in rows])
