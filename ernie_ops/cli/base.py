"""What every subcommand is: a name, a one-line help, examples, its arguments and `run`."""

from __future__ import annotations

import argparse


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
