"""Polling and ports for the tests that wait on other processes (servers, process trees)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll `predicate` every 50 ms until it is true or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def free_port() -> int:
    """A port the OS has just found free on 127.0.0.1 (other tests and helpers run servers too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
