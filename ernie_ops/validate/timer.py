"""Waking up on time inside an asyncio loop: the open loop's dispatcher waits for each request's
due time here.

`asyncio.sleep` wakes up to a millisecond late: the loop's selector is epoll, whose timeout is in
whole milliseconds (rounded up). At 1000 requests per second, where the mean gap is a millisecond,
that lateness alone would raise the inter-arrival CV of a Poisson schedule by about 8% (computed,
not measured: a lateness uniform in [0, 1 ms) adds 2/12 ms^2 to the variance of 1 ms gaps). On Linux a
timerfd (CLOCK_MONOTONIC, the clock of `time.perf_counter`) armed at the absolute due time becomes
readable on time to the microsecond, and the loop wakes for it like for any socket: precise
without spinning, so a loaded machine's scheduler still sees a sleeping process. Elsewhere (or if
the timerfd cannot be made), the fallback sleeps to a millisecond before the due time and yields to
the loop until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import sys
import time
from typing import Any

CLOCK_MONOTONIC = 1
TFD_TIMER_ABSTIME = 1
TFD_NONBLOCK = 0o4000
TFD_CLOEXEC = 0o2000000
SPIN_S = 0.0015  # the fallback yields instead of sleeping this close to the due time


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> Any:
    if not sys.platform.startswith("linux") or time.get_clock_info("perf_counter").implementation != (
        "clock_gettime(CLOCK_MONOTONIC)"
    ):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.POINTER(_Itimerspec),
        ]
        return libc
    except (OSError, AttributeError):
        return None


class Waker:
    """`await waker.until(t)`: returns at `time.perf_counter()` >= t. Use it from one task at a time;
    `close()` when done."""

    def __init__(self) -> None:
        self._libc = _libc()
        self._fd = -1
        self._waiting: asyncio.Future[None] | None = None
        if self._libc is not None:
            fd = self._libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                asyncio.get_running_loop().add_reader(fd, self._fired)

    @property
    def precise(self) -> bool:
        return self._fd >= 0

    def _fired(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)

    async def until(self, due: float) -> None:
        if self._fd < 0:
            await _fallback(due)
            return
        while time.perf_counter() < due:
            spec = _Itimerspec()
            spec.it_value.tv_sec = int(due)
            spec.it_value.tv_nsec = int((due - int(due)) * 1e9)
            if self._libc.timerfd_settime(self._fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
                await _fallback(due)
                return
            self._waiting = asyncio.get_running_loop().create_future()
            try:
                await self._waiting
            finally:
                self._waiting = None

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


async def _fallback(due: float) -> None:
    while True:
        left = due - time.perf_counter()
        if left <= 0:
            return
        await asyncio.sleep(left - SPIN_S if left > SPIN_S else 0)
