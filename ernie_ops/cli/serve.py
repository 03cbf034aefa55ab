from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ernie_ops.cli.base import Subcommand
from ernie_ops.errors import UserError


class Serve(Subcommand):
    name = "serve"
    help = "serve a checkpoint through FastDeploy's OpenAI-compatible server (pre-flight, supervised)"
    description = (
        "Serve a profile (recipes/serve/*.yaml), a checkpoint directory or a run directory. Pre-flight: "
        "the checkpoint is local and passes verify (a LoRA run is refused: export first), the ports are "
        "free, the GPUs exist and the planner says it fits. Then FastDeploy runs as a supervised child "
        "until Ctrl-C (it dies with ernie-ops, even by SIGKILL) or --detach. Each port serves one server: "
        "a second start on it is refused. `serve status` and `serve stop` find every server you started "
        "on this machine, from any directory (records in $XDG_STATE_HOME/ernie-ops/serve, default "
        "~/.local/state/ernie-ops/serve; runs/serve/PORT.json links to them)."
    )
    examples = (
        "ernie-ops serve recipes/serve/ERNIE-4.5-21B-A3B_wint4_1x80G.yaml --print-command",
        "ernie-ops serve recipes/serve/ERNIE-4.5-21B-A3B_wint4_1x80G.yaml --set model=runs/my-run",
        "ernie-ops serve runs/my-run --set quantization=wint8 --port 8280 --detach",
        "ernie-ops serve runs/my-run --host 0.0.0.0 --set api_key_env=MY_KEY   # reachable from the network",
        "ernie-ops serve status            # a table; --json for scripts",
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
        parser.add_argument(
            "--port", type=int, help="the port to serve on (as --set port=N); with stop/status: which server"
        )
        parser.add_argument(
            "--host",
            help="the address to bind (as --set host=H): 127.0.0.1 this machine only, 0.0.0.0 or :: every "
            "network interface; default: the backend's own (FastDeploy 0.0.0.0, embedded 127.0.0.1)",
        )
        parser.add_argument("--json", action="store_true", help="with status: JSON for scripts")
        parser.add_argument(
            "--backend",
            choices=("fastdeploy", "paddle"),
            help="fastdeploy (GPU) or paddle (the embedded CPU server); default: fastdeploy where it "
            "and a GPU exist, else paddle",
        )

    def run(self, args: argparse.Namespace) -> int:
        if args.target in ("status", "stop"):
            return _lifecycle(args)
        if args.json:
            raise UserError("--json goes with `serve status`", hint="ernie-ops serve status --json")
        from ernie_ops.serve.fastdeploy import build_launch
        from ernie_ops.serve.preflight import resolve_model
        from ernie_ops.serve.profile import load_profile, profile_for_checkpoint

        # the flags come last, so they win over the same key in --set
        sets = [
            *args.sets,
            *(f"{k}={v}" for k, v in (("port", args.port), ("host", args.host)) if v is not None),
        ]
        target = Path(args.target)
        if target.suffix in (".yaml", ".yml"):
            profile = load_profile(target, sets)
        else:
            profile = profile_for_checkpoint(args.target, sets)
        from ernie_ops.serve.preflight import choose_backend, default_host

        profile.backend, reason = choose_backend(args.backend or profile.backend)
        if reason:
            print(reason)
        profile.host = profile.host or default_host(profile.backend)
        if profile.backend == "paddle":
            return _start_embedded(profile, args)
        if args.print_command:
            model_dir = Path(profile.model).expanduser()
            try:
                resolved = resolve_model(profile.model, profile.backend)
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

    target = resolve_model(profile.model, profile.backend)
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

    command = [
        sys.executable,
        "-m",
        "ernie_ops.serve.openai_server",
        "--model",
        profile.model,
        "--host",
        profile.host,
        "--port",
        str(profile.port),
        "--max-batch-size",
        str(profile.max_num_seqs),
    ]
    if profile.served_model_name:
        command += ["--served-model-name", profile.served_model_name]
    if profile.chat_template:
        command += ["--chat-template", str(Path(profile.chat_template).expanduser())]
    if profile.max_request_mb is not None:
        command += ["--max-request-mb", str(profile.max_request_mb)]
    if args.print_command:
        print(" ".join(shlex.quote(c) for c in command))
        return 0
    target = resolve_model(profile.model, profile.backend)
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

    from ernie_ops.serve.preflight import LOG_DIR, exposure_warning, server_ports, state_dir
    from ernie_ops.serve.supervisor import run_server

    warning = exposure_warning(
        profile.host, profile.port, protected="FD_API_KEY" in env or "ERNIE_OPS_API_KEY" in env
    )
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = (run_dir / "logs" if run_dir else LOG_DIR) / f"serve-{profile.port}-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    return run_server(
        command,
        {**env, "FD_LOG_DIR": str(log_dir)},
        log_dir,
        profile.host,
        profile.port,
        profile.startup_timeout,
        args.detach,
        state_dir() / f"{profile.port}.json",
        ports=server_ports(profile).values(),
        view=LOG_DIR / f"{profile.port}.json",
    )


def _lifecycle(args: argparse.Namespace) -> int:
    from ernie_ops.serve.preflight import state_dir
    from ernie_ops.serve.supervisor import list_servers, stop_server

    unused = [
        f
        for f, v in (
            ("--set", args.sets),
            ("--detach", args.detach),
            ("--print-command", args.print_command),
            ("--backend", args.backend),
        )
        if v
    ]
    if unused or (args.json and args.target == "stop"):
        raise UserError(
            f"{', '.join(unused) or '--json'} does not apply to `serve {args.target}`",
            hint=f"ernie-ops serve {args.target} [--port N] [--host H]"
            + (" [--json]" if args.target == "status" else ""),
        )
    where = state_dir()
    servers = [
        s
        for s in list_servers(where)
        if (args.port is None or s["port"] == args.port) and (args.host is None or s.get("host") == args.host)
    ]
    which = " ".join(f"{k} {v}" for k, v in (("port", args.port), ("host", args.host)) if v is not None)
    if args.target == "status":
        if args.json:
            print(json.dumps(servers, indent=2))
        elif servers:
            print(_table(servers))
        else:
            print(f"no server{' on ' + which if which else ''} (records in {where})")
        return 0
    if not servers:
        print(f"no server{' on ' + which if which else ''} to stop (records in {where})", file=sys.stderr)
        return 1
    code = 0
    for server in servers:
        port, pid = server["port"], server.get("pid")
        if server["state"] == "foreground":
            print(
                f"port {port}: served in the foreground by pid {pid}; stop it there (Ctrl-C) or: kill {pid}",
                file=sys.stderr,
            )
            code = 1
        elif server["state"] == "stale":
            leftovers = stop_server(Path(server["state_file"]))  # workers it may have left in its group
            print(
                f"port {port}: not running (pid {pid} had exited: a stale record); removed the record"
                + (" and stopped the workers it left" if leftovers else "")
            )
        else:
            stop_server(Path(server["state_file"]))
            print(f"port {port}: stopped the server (pid {pid} and its workers)")
    return code


def _table(servers: list[dict]) -> str:
    """One line per server: what a person checks first."""
    rows = [("PORT", "STATE", "PID", "URL", "STARTED", "LOGS")]
    for s in servers:
        rows.append(
            (
                str(s["port"]),
                s["state"],
                str(s.get("pid", "")),
                s.get("url") or "-",
                s.get("started_at", "-"),
                s.get("log_dir") or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
