from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ernie_ops.cli.base import Subcommand


class Serve(Subcommand):
    name = "serve"
    help = "serve a checkpoint through FastDeploy's OpenAI-compatible server (pre-flight, supervised)"
    description = (
        "Serve a profile (recipes/serve/*.yaml), a checkpoint directory or a run directory. Pre-flight: "
        "the checkpoint is local and passes verify (a LoRA run is refused: export first), the ports are "
        "free, the GPUs exist and the planner says it fits. Then FastDeploy runs as a supervised child "
        "until Ctrl-C (or --detach). `serve status` and `serve stop` manage detached servers."
    )
    examples = (
        "ernie-ops serve recipes/serve/ERNIE-4.5-21B-A3B_wint4_1x80G.yaml --print-command",
        "ernie-ops serve recipes/serve/ERNIE-4.5-21B-A3B_wint4_1x80G.yaml --set model=runs/my-run",
        "ernie-ops serve runs/my-run --set quantization=wint8 --set port=8280 --detach",
        "ernie-ops serve status",
        "ernie-ops serve stop --port 8280",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("target", metavar="PROFILE|CHECKPOINT|RUN_DIR|status|stop")
        parser.add_argument(
            "--set",
            dest="sets",
            action="append",
            default=[],
            metavar="key=value",
            help="override a profile field (repeatable)",
        )
        parser.add_argument(
            "--print-command", action="store_true", help="print the FastDeploy command and exit"
        )
        parser.add_argument("--detach", action="store_true", help="return once the server is ready")
        parser.add_argument("--port", type=int, help="with stop/status: which server")

    def run(self, args: argparse.Namespace) -> int:
        if args.target in ("status", "stop"):
            return _lifecycle(args)
        from ernie_ops.serve.fastdeploy import build_launch
        from ernie_ops.serve.preflight import resolve_model
        from ernie_ops.serve.profile import load_profile, profile_for_checkpoint

        target = Path(args.target)
        if target.suffix in (".yaml", ".yml"):
            profile = load_profile(target, args.sets)
        else:
            profile = profile_for_checkpoint(args.target, args.sets)
        if profile.backend != "fastdeploy":
            from ernie_ops.errors import UserError

            raise UserError(
                "backend paddle (the embedded CPU server) is not built yet", hint="backend: fastdeploy"
            )
        if args.print_command:
            model_dir = Path(profile.model).expanduser()
            try:
                resolved = resolve_model(profile.model)
                model_dir, is_vl = resolved.model_dir, resolved.is_vl
            except Exception:  # printing the command needs no local model: show it as given
                is_vl = "-VL-" in profile.model
            launch = build_launch(profile, model_dir, is_vl)
            print(launch.shown())
            return 0
        return _start(profile, args)


def _start(profile, args: argparse.Namespace) -> int:
    import datetime as dt
    import os

    from ernie_ops.serve.fastdeploy import build_launch
    from ernie_ops.serve.preflight import STATE_DIR, check_checkpoint, check_gpus, check_ports, resolve_model
    from ernie_ops.serve.supervisor import run_server

    target = resolve_model(profile.model)
    check_checkpoint(target)
    check_ports(profile)
    plan = check_gpus(profile, target)
    if plan:
        print(plan)
    launch = build_launch(profile, target.model_dir, target.is_vl, python=sys.executable)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = (target.run_dir / "logs" if target.run_dir else STATE_DIR) / f"serve-{profile.port}-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"command: {launch.shown()}")
    env = {**os.environ, **launch.env, "FD_LOG_DIR": str(log_dir)}
    state = STATE_DIR / f"{profile.port}.json"
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    return run_server(
        launch.argv,
        env,
        log_dir,
        "127.0.0.1" if profile.host == "0.0.0.0" else profile.host,
        profile.port,
        profile.startup_timeout,
        args.detach,
        state,
    )


def _lifecycle(args: argparse.Namespace) -> int:
    from ernie_ops.serve.preflight import STATE_DIR, running_servers
    from ernie_ops.serve.supervisor import server_status, stop_server

    servers = [s for s in running_servers() if args.port is None or s.get("port") == args.port]
    if args.target == "status":
        statuses = [server_status(Path(s["state_file"])) for s in servers]
        print(json.dumps(statuses, indent=2) if statuses else f"no detached server recorded in {STATE_DIR}")
        return 0
    if not servers:
        print(
            f"no detached server{'' if args.port is None else f' on port {args.port}'} in {STATE_DIR}",
            file=sys.stderr,
        )
        return 1
    ok = all(stop_server(Path(s["state_file"])) for s in servers)
    return 0 if ok else 1
