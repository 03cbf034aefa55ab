from __future__ import annotations

import argparse
import json
import sys

from ernie_ops.cli.base import Subcommand, add_set_argument
from ernie_ops.errors import UserError


class Serve(Subcommand):
    name = "serve"
    help = "serve a checkpoint through an OpenAI-compatible server (pre-flight, supervised)"
    description = (
        "Serve a profile (recipes/serve/*.yaml), a checkpoint directory or a run directory. Pre-flight: "
        "the checkpoint is local and passes verify (a LoRA run is refused: export first), the ports are "
        "free, the GPUs exist and the planner says it fits. Then the server runs as a supervised child "
        "until Ctrl-C (it dies with ernie-ops, even by SIGKILL) or --detach. Each port serves one server: "
        "a second start on it is refused. `serve status` and `serve stop` find every server you started "
        "on this machine, from any directory (records in $XDG_STATE_HOME/ernie-ops/serve, default "
        "~/.local/state/ernie-ops/serve; runs/serve/PORT.json links to them)."
    )
    examples = (
        "ernie-ops serve recipes/serve/ERNIE-4.5-21B-A3B_wint4_1x80G.yaml --print-command",
        "ernie-ops serve recipes/serve/ERNIE-4.5-21B-A3B_wint4_1x80G.yaml --set model=runs/my-run",
        "ernie-ops serve recipes/serve/ERNIE-4.5-21B-A3B_fp8_1x80G_vllm.yaml --set model=runs/my-run-hf "
        "--print-command   # vLLM: export --format hf first",
        "ernie-ops serve runs/my-run --set quantization=wint8 --port 8280 --detach",
        "ernie-ops serve recipes/serve/cpu/ERNIE-4.5-0.3B_wint8_cpu_paddle.yaml --set model=runs/my-run"
        "   # FastDeploy's wint8, emulated on a CPU",
        "ernie-ops serve runs/my-run --host 0.0.0.0 --set api_key_env=MY_KEY   # reachable from the network",
        "ernie-ops serve status            # a table; --json for scripts",
        "ernie-ops serve stop --port 8280",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("target", metavar="PROFILE|CHECKPOINT|RUN_DIR|status|stop")
        add_set_argument(parser, "a profile field")
        parser.add_argument(
            "--print-command", action="store_true", help="print the server's command and exit"
        )
        parser.add_argument("--detach", action="store_true", help="return once the server is ready")
        parser.add_argument(
            "--port", type=int, help="the port to serve on (as --set port=N); with stop/status: which server"
        )
        from ernie_ops.serve.backends import all_backends

        parser.add_argument(
            "--host",
            help="the address to bind (as --set host=H): 127.0.0.1 this machine only, 0.0.0.0 or :: every "
            "network interface; default: the backend's own ("
            + ", ".join(f"{b.name} {b.default_host}" for b in all_backends())
            + ")",
        )
        parser.add_argument("--json", action="store_true", help="with status: JSON for scripts")
        parser.add_argument(
            "--engine",
            choices=[b.name for b in all_backends()],
            help="the serving engine (as the profile's engine:): "
            + "; ".join(f"{b.name}: {b.serves}" for b in all_backends())
            + "; default: the profile's, else the first of these that can run here",
        )
        parser.add_argument(  # the flag's old name: still accepted, with a warning
            "--backend", dest="backend", choices=[b.name for b in all_backends()], help=argparse.SUPPRESS
        )

    def run(self, args: argparse.Namespace) -> int:
        if args.target in ("status", "stop"):
            return _lifecycle(args)
        if args.json:
            raise UserError("--json goes with `serve status`", hint="ernie-ops serve status --json")
        import ernie_ops.serve as serve

        # the flags come last, so they win over the same key in --set
        sets = [
            *args.sets,
            *(f"{k}={v}" for k, v in (("port", args.port), ("host", args.host)) if v is not None),
        ]
        profile = serve.load(args.target, sets)
        _, reason = serve.select(profile, _engine(args))
        if reason:
            print(reason)
        if args.print_command:
            print(serve.command(profile).shown())
            return 0
        return serve.start(profile, detach=args.detach)


def _engine(args: argparse.Namespace) -> str | None:
    """--engine, or its deprecated name --backend (warned about once)."""
    if args.backend is None:
        return args.engine
    from ernie_ops.serve.profile import warn_once

    if args.engine is not None and args.engine != args.backend:
        raise UserError(
            f"--engine {args.engine} and --backend {args.backend} disagree",
            hint="give --engine only (--backend is its old name)",
        )
    warn_once("backend-flag", f"--backend is deprecated, use --engine {args.backend} (same values)")
    return args.backend


def _lifecycle(args: argparse.Namespace) -> int:
    import ernie_ops.serve as serve
    from ernie_ops.serve.preflight import state_dir

    unused = [
        f
        for f, v in (
            ("--set", args.sets),
            ("--detach", args.detach),
            ("--print-command", args.print_command),
            ("--engine", args.engine),
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
    which = " ".join(f"{k} {v}" for k, v in (("port", args.port), ("host", args.host)) if v is not None)
    if args.target == "status":
        servers = serve.servers(args.port, args.host)
        if args.json:
            print(json.dumps(servers, indent=2))
        elif servers:
            print(_table(servers))
        else:
            print(f"no server{' on ' + which if which else ''} (records in {where})")
        return 0
    done = serve.stop(args.port, args.host)
    if not done:
        print(f"no server{' on ' + which if which else ''} to stop (records in {where})", file=sys.stderr)
        return 1
    code = 0
    for server in done:
        port, pid = server.port, server.pid
        if server.outcome == "foreground":
            print(
                f"port {port}: served in the foreground by pid {pid}; stop it there (Ctrl-C) or: kill {pid}",
                file=sys.stderr,
            )
            code = 1
        elif server.outcome == "stale":
            print(
                f"port {port}: not running (pid {pid} had exited: a stale record); removed the record"
                + (" and stopped the workers it left" if server.stopped else "")
            )
        else:
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
