"""A server started detached for a caller that goes on with other steps (`ernie-ops pipeline`,
`ernie-ops sweep`): a free block of ports, `start(profile, detach=True)` with its start-up output in
the caller's log file, and, when it does not start, the diagnosis picked out of that log.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ernie_ops.errors import Terminated, UserError


class NotStarted(Exception):
    """The server did not start; the message is the diagnosis (see `start_failure`)."""


def start_detached(profile: Any, log: Path, backend: str | None = None) -> None:
    """Start `profile` detached, through `ernie_ops.serve.start` in this process, everything it
    prints going to `log`. Returns once it is ready; raises NotStarted with the diagnosis,
    KeyboardInterrupt for a Ctrl-C during the start (the supervisor has stopped the server) and
    Terminated for another signal."""
    import ernie_ops.serve as serving

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            code = serving.start(profile, detach=True, backend=backend)
        except UserError as err:  # what pre-flight refused, worded as the CLI words it
            print(f"error: {err}")  # with its `  hint:` line
            code = 2
    if code == 130:
        raise KeyboardInterrupt
    if code > 128:
        raise Terminated(code - 128)
    if code != 0:
        raise NotStarted(start_failure(log, code))


def start_failure(log: Path, code: int) -> str:
    """Why a server did not start, from what `start` printed: the supervisor's or pre-flight's
    `error:` line (and its hint), the server's own last error, and where its full logs are."""
    from ernie_ops.supervise import last_exception, read_tail

    lines = read_tail(log)
    picked = [line.strip() for line in lines if line.startswith("error:")][:1]
    cause = last_exception(lines) or next(
        (line.strip() for line in reversed(lines) if "error" in line.lower() and line.strip() not in picked),
        None,
    )
    picked += [cause] if cause else []
    picked += [line.strip() for line in lines if line.startswith(("full logs:", "  hint:"))]
    if not picked:
        picked = [line.rstrip() for line in lines[-8:]]
    return f"the server did not start (exit {code}):\n" + "\n".join(picked) + f"\n(everything: {log})"


def free_port_block(size: int = 4) -> int:
    """A port whose next `size - 1` neighbours are free too, probed as the server binds them (every
    interface, SO_REUSEADDR: a port an earlier server left in TIME_WAIT is free). Searched below the
    ephemeral range, where a busy client's own TIME_WAIT connections never sit."""
    import random

    from ernie_ops.serve.preflight import port_free

    low = ephemeral_low()
    for _ in range(200):
        port = random.randrange(10000, low - size)
        if all(port_free("0.0.0.0", port + i) for i in range(size)):
            return port
    raise UserError(
        f"no block of {size} free port(s) found between 10000 and {low}",
        hint="ernie-ops serve status   # servers left running: ernie-ops serve stop --port P",
    )


def ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
    return low if low > 10100 else 32768
