"""Ctrl-C and SIGTERM handling that never splits a commit from its bookkeeping.

Python raises ``KeyboardInterrupt`` between any two bytecodes. If that happens after a SQLite
transaction commits but before the run's counters are updated, the run reports fewer committed
videos than the catalog holds. ``install`` sets handlers for SIGINT and SIGTERM that raise at
once, except inside ``deferred()``: there the signal is remembered and raised when the block
ends, so a block that commits and counts runs whole or not at all. A second signal ends the
process at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C (SIGINT)."""


_depth = 0
_pending: KeyboardInterrupt | None = None
_interrupted = False


def _handle(signum: int, frame: FrameType | None) -> None:
    global _pending, _interrupted
    if _interrupted:
        # Unwinding a second time would break off the clean-up, and native threads then abort
        # the process. Committed transactions are on disk already, as after `kill -9`.
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        os.write(2, f"indexer: second {name}: stopping at once; committed videos are kept, run the "
                    "same command again to resume\n".encode())
        os._exit(128 + signum)
    _interrupted = True
    error = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    if _depth > 0:
        _pending = error
        return
    raise error


@contextmanager
def install() -> Iterator[None]:
    """Route SIGINT and SIGTERM through the deferring handler until the block ends.

    Only the main thread can set signal handlers; elsewhere this does nothing.
    """
    global _pending, _interrupted
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {
        number: signal.signal(number, _handle) for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _pending = None
        _interrupted = False


@contextmanager
def deferred() -> Iterator[None]:
    """Hold back an interrupt that arrives inside the block until the block has ended."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            error, _pending = _pending, None
            raise error
