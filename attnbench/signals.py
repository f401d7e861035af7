"""Stopping signals handled so that a run saves what it measured instead of dying with it.

:func:`sigterm_as_ctrl_c`: SIGTERM raises KeyboardInterrupt, as Ctrl-C does (for a launcher of processes).
:func:`stop_after_the_current_step`: Ctrl-C or SIGTERM (a job timeout, a cancelled CI job, ``kill``) asks the
run to stop at the next safe point; a second one acts at once."""

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


STOP_REASONS = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}


@contextlib.contextmanager
def stop_after_the_current_step(request_stop: Callable[[int, str], None]) -> Iterator[None]:
    """Within the block the first Ctrl-C or SIGTERM calls ``request_stop(signum, reason)`` and raises nothing: the
    caller stops at its next safe point (pytest: after the running test, with the run saved whole rather than cut
    inside a write). A second signal acts at once (Ctrl-C raises KeyboardInterrupt, SIGTERM kills). Only in the
    main thread, and only for signals whose handler is Python's default: a handler someone else set stays."""
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    mine = [signum for signum, default in defaults.items() if signal.getsignal(signum) is default]

    def handle(signum, frame):
        for other in mine:  # the next signal of either kind is not asked twice
            signal.signal(other, defaults[other])
        request_stop(signum, STOP_REASONS[signum])

    before = {signum: signal.signal(signum, handle) for signum in mine}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
