"""SIGTERM handled as Ctrl-C, so that a run stopped by a job timeout, a cancelled CI job or ``kill`` saves what it
measured instead of dying with it."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def sigterm_as_ctrl_c(on_sigterm: Callable[[], None] | None = None) -> Iterator[None]:
    """Within the block SIGTERM raises KeyboardInterrupt (after calling ``on_sigterm``); a second SIGTERM kills at
    once. Only in the main thread and where SIGTERM has its default action: a handler someone else set stays."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def terminate(signum, frame):
        if on_sigterm is not None:
            on_sigterm()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt("SIGTERM")

    before = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
