"""What every subcommand is: a name, a one-line help, examples, its arguments and `run`."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ernie_ops.validate.client import Endpoint


class Subcommand:
    name: str = ""
    help: str = ""
    description: str = ""
    examples: tuple[str, ...] = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's arguments."""

    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit status (0 success, 1 a check failed)."""
        raise NotImplementedError

    def epilog(self) -> str:
        return "examples:\n" + "\n".join(f"  {e}" for e in self.examples) if self.examples else ""


def add_set_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """--set key=value, repeatable, into `args.sets`: how `serve`, `pipeline` and `sweep` override WHAT
    of the file they load."""
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="key=value",
        help=f"override {what} (repeatable)",
    )


def add_endpoint_arguments(parser: argparse.ArgumentParser, url_optional: bool = False) -> None:
    """URL, --model and --api-key-env: how `smoke`, `bench` and `eval` name an OpenAI endpoint."""
    parser.add_argument(
        "url",
        metavar="URL",
        nargs="?" if url_optional else None,
        help="the server, e.g. http://127.0.0.1:8180 (or .../v1)",
    )
    parser.add_argument("--model", help="served model name (default: the first /v1/models lists)")
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the API key (keys never go on the command line)",
    )


def endpoint_from(args: argparse.Namespace) -> Endpoint:
    from ernie_ops.validate.client import Endpoint  # lazy: aiohttp is not needed for `--help`

    return Endpoint.parse(args.url, args.api_key_env, args.model)


def add_mask_argument(parser: argparse.ArgumentParser) -> None:
    """--no-mask: what `eval`, `smoke` and `pipeline` write keeps personal data as it was."""
    parser.add_argument(
        "--no-mask",
        dest="mask",
        action="store_false",
        help="do not mask personal data in the results and reports this run writes (masked by default; "
        "the report says when it was off; ERNIE_OPS_NO_MASK=1 does the same). Names of people are never "
        "detected: that needs a NER model (see ernie_ops.privacy)",
    )


@contextlib.contextmanager
def masking_for(args: argparse.Namespace) -> Iterator[None]:
    """Masking off (ERNIE_OPS_NO_MASK) while a command given --no-mask runs in this process, and
    as it was afterwards: a later command in the same process (main() called as a library) masks."""
    from ernie_ops.privacy import NO_MASK_ENV

    saved = os.environ.get(NO_MASK_ENV)
    if not args.mask:
        os.environ[NO_MASK_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(NO_MASK_ENV, None)
        else:
            os.environ[NO_MASK_ENV] = saved
