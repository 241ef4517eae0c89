"""Graceful stop for long-lived loops: the first SIGINT/SIGTERM asks to stop, the second stops at once."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("stopping")  # the name the log file has always shown


def _log_later(message: str, *args: object) -> None:
    """Log from a short thread, not from the signal handler itself.

    The handler runs between two bytecodes of the main thread, possibly in the middle of that
    thread's own write to the log file; writing there again fails ("reentrant call") and the
    error would surface in whatever the main thread was doing. Another thread just waits for
    the handler's lock.
    """
    threading.Thread(target=log.warning, args=(message, *args), name="signal-log").start()


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[threading.Event]:
    """Within the block, SIGINT/SIGTERM set ``stop``; a second signal raises KeyboardInterrupt.

    Outside the main thread (where handlers cannot be installed) this only yields ``stop``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            _log_later("second %s: stopping now", name)
            raise KeyboardInterrupt
        stop.set()  # first: the request to stop must not depend on the log line below
        _log_later("%s: finishing the current step, then exiting (send it again to stop at once)", name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
