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
        parser.add_argument(
            "--backend",
            choices=("fastdeploy", "paddle"),
            help="fastdeploy (GPU) or paddle (the embedded CPU server); default: fastdeploy where it "
            "and a GPU exist, else paddle",
        )

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
        from ernie_ops.serve.preflight import choose_backend

        profile.backend, reason = choose_backend(args.backend or profile.backend)
        if reason:
            print(reason)
        if profile.backend == "paddle":
            return _start_embedded(profile, args)
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
    """FastDeploy: pre-flight (checkpoint, ports, GPUs + planner), then supervised."""
    import os

    from ernie_ops.serve.fastdeploy import build_launch
    from ernie_ops.serve.preflight import check_checkpoint, check_gpus, check_ports, resolve_model

    target = resolve_model(profile.model)
    check_checkpoint(target)
    check_ports(profile)
    plan = check_gpus(profile, target)
    if plan:
        print(plan)
    launch = build_launch(profile, target.model_dir, target.is_vl, python=sys.executable)
    print(f"command: {launch.shown()}")
    return _supervise(profile, args, launch.argv, {**os.environ, **launch.env}, target.run_dir)


def _start_embedded(profile, args: argparse.Namespace) -> int:
    """The embedded CPU server, supervised exactly like FastDeploy (readiness, logs, status/stop)."""
    import os
    import shlex

    from ernie_ops.serve.preflight import check_checkpoint, check_ports, resolve_model
    from ernie_ops.serve.profile import api_key

    host = "127.0.0.1" if profile.host == "0.0.0.0" else profile.host  # no TLS: one machine by default
    command = [
        sys.executable,
        "-m",
        "ernie_ops.serve.openai_server",
        "--model",
        profile.model,
        "--host",
        host,
        "--port",
        str(profile.port),
        "--max-batch-size",
        str(profile.max_num_seqs),
    ]
    if profile.served_model_name:
        command += ["--served-model-name", profile.served_model_name]
    if args.print_command:
        print(" ".join(shlex.quote(c) for c in command))
        return 0
    target = resolve_model(profile.model)
    command[command.index("--model") + 1] = str(target.model_dir)
    check_checkpoint(target)
    check_ports(profile, only_main=True)
    env = dict(os.environ)
    key = api_key(profile)
    if key:
        env["ERNIE_OPS_API_KEY"] = key  # the environment, never the command line
    print(f"command: {' '.join(shlex.quote(c) for c in command)}")
    return _supervise(profile, args, command, env, target.run_dir)


def _supervise(profile, args: argparse.Namespace, command: list[str], env: dict[str, str], run_dir) -> int:
    import datetime as dt

    from ernie_ops.serve.preflight import STATE_DIR
    from ernie_ops.serve.supervisor import run_server

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = (run_dir / "logs" if run_dir else STATE_DIR) / f"serve-{profile.port}-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    host = "127.0.0.1" if profile.host == "0.0.0.0" else profile.host
    return run_server(
        command,
        {**env, "FD_LOG_DIR": str(log_dir)},
        log_dir,
        host,
        profile.port,
        profile.startup_timeout,
        args.detach,
        STATE_DIR / f"{profile.port}.json",
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
