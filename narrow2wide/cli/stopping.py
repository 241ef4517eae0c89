"""Graceful stop for long-lived loops: the first SIGINT/SIGTERM asks to stop, the second stops at once."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("stopping")  # the name the log file has always shown


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[threading.Event]:
    """Within the block, SIGINT/SIGTERM set ``stop``; a second signal raises KeyboardInterrupt.

    Outside the main thread (where handlers cannot be installed) this only yields ``stop``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            log.warning("second %s: stopping now", signal.Signals(signum).name)
            raise KeyboardInterrupt
        log.warning("%s: finishing the current step, then exiting (send it again to stop at once)",
                    signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
