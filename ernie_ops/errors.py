"""Errors meant for people: what went wrong, where, and what to do about it."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad argument, bad file, missing dependency).

    The CLI prints it without a traceback and exits with status 2.
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP ended the command. A KeyboardInterrupt, so every cleanup that runs on
    Ctrl-C (temporary files, child processes, run records) runs for these signals too."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def did_you_mean(word: str, choices: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The closest choice to a misspelt word, or None when nothing is close."""
    import difflib

    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None
