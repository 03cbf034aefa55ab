"""`ernie-ops`: the entry point. Exit status: 0 ok, 1 a check failed, 2 a usage or input error,
130 interrupted."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from ernie_ops import __version__
from ernie_ops.cli.base import Subcommand
from ernie_ops.cli.bench import Bench
from ernie_ops.cli.check import Check
from ernie_ops.cli.compare import Compare
from ernie_ops.cli.data import Data
from ernie_ops.cli.doctor import Doctor
from ernie_ops.cli.evaluate import Eval
from ernie_ops.cli.export import Export
from ernie_ops.cli.gateway import Gateway
from ernie_ops.cli.gc import Gc
from ernie_ops.cli.hub import Pull, Push
from ernie_ops.cli.models import Models
from ernie_ops.cli.pipeline import Demo, PipelineCommand
from ernie_ops.cli.plan import Plan
from ernie_ops.cli.recipes import Recipes
from ernie_ops.cli.review import Review
from ernie_ops.cli.rollout import Rollout
from ernie_ops.cli.serve import Serve
from ernie_ops.cli.smoke import Smoke
from ernie_ops.cli.sweep import SweepCommand
from ernie_ops.cli.tiny_model import TinyModel
from ernie_ops.cli.top import TopCommand
from ernie_ops.cli.train import Train
from ernie_ops.cli.verify import Verify
from ernie_ops.errors import Terminated, UserError
from ernie_ops.log import setup_logging

SUBCOMMANDS: tuple[type[Subcommand], ...] = (
    Doctor,
    Models,
    TinyModel,
    Check,
    Recipes,
    Data,
    Train,
    Export,
    Verify,
    Pull,
    Push,
    Serve,
    Plan,
    Smoke,
    Bench,
    Eval,
    Compare,
    Gateway,
    Rollout,
    Review,
    TopCommand,
    PipelineCommand,
    Demo,
    SweepCommand,
    Gc,
)

EXAMPLES = """\
examples:
  ernie-ops demo                         # the whole pipeline on this CPU, report and verdict at the end
  ernie-ops doctor                       # what is installed, what is missing, what to do
  ernie-ops models                       # the ERNIE 4.5 model catalog
  ernie-ops tiny-model runs/tiny-dense   # a tiny random ERNIE 4.5 checkpoint for CPU runs
  ernie-ops check my_recipe.yaml         # every problem of an ERNIEKit recipe, before launch
  ernie-ops recipes                      # the recipe library (model, method, context, GPUs)
  ernie-ops data lint train.jsonl        # every bad training record, with its line and reason
  ernie-ops top 127.0.0.1:8200           # live per-backend requests/s, errors, TTFT and E2E p99
  ernie-ops review list --status open    # answers the gateway flagged as wrong-looking, to judge
  ernie-ops smoke http://127.0.0.1:8180  # a functional checklist against any OpenAI endpoint
  ernie-ops sweep my-sweep.yaml          # serve variants (wint8, wint4, engines) in turn: trade-off report
  ernie-ops COMMAND --help               # details and examples of one command
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ernie-ops",
        description="Fine-tune ERNIE 4.5 with ERNIEKit, serve it with FastDeploy, and validate it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ernie-ops {__version__}")
    _add_verbosity(parser, default=0)
    # the same flags after the subcommand; SUPPRESS keeps them from resetting a value given before it
    common = argparse.ArgumentParser(add_help=False)
    _add_verbosity(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cls in SUBCOMMANDS:
        command = cls()
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            epilog=command.epilog(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        command.add_arguments(p)
        p.set_defaults(handler=command)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        action="store_const",
        const=1,
        dest="verbosity",
        default=default,
        help="more logging",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_const",
        const=-1,
        dest="verbosity",
        default=default,
        help="warnings only",
    )


def main(argv: list[str] | None = None) -> int:
    with signals_end_the_command():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    verbosity = 0
    try:
        parser = build_parser()
        args = _parse(parser, argv)
        if args.command is None:
            parser.print_help()
            return 2
        verbosity = args.verbosity
        setup_logging(verbosity)
        return int(args.handler.run(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Terminated as stop:
        print(f"terminated by {signal.Signals(stop.signum).name}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ernie-ops recipes | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # a file or device the user named is missing, unreadable or full
        if verbosity > 0:
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}\n  hint: -v shows the traceback", file=sys.stderr)
        return 2


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments; `key=value` overrides may also come after options (`train r.yaml --gpus 0
    max_steps=10`), which argparse alone refuses once the positionals are behind it."""
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(map(_is_override, extra)):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.parse_args(argv)  # argparse's own usage error for the subcommand, exit 2
    return args


def _is_override(arg: str) -> bool:
    key, eq, _ = arg.partition("=")
    return bool(eq and key) and not key.startswith("-")


@contextlib.contextmanager
def signals_end_the_command() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated (cleanups run as on Ctrl-C). A signal that lands in code
    where Python can only drop an exception (a weakref callback or __del__, e.g. inside aiohttp) is
    delivered again a moment later, so it still ends the command (`timeout` sends one SIGTERM)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    previous = sys.unraisablehook

    def redeliver(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, Terminated):
            previous(unraisable)
            return
        signum = unraisable.exc_value.signum
        signal.signal(signum, _terminate)
        # from another thread: a signal raised here would run its handler inside this hook
        threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()

    sys.unraisablehook = redeliver
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _terminate(signum: int, frame: FrameType | None) -> None:
    # once: a second signal during cleanup must not cut the cleanup short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise Terminated(signum)


if __name__ == "__main__":
    sys.exit(main())
