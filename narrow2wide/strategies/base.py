"""What every strategy shares: its options, its result, and the small base class."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from narrow2wide.backfill.runner import BackfillResult
from narrow2wide.db.runtime import Runtime
from narrow2wide.ops.throttle import ThrottleSettings
from narrow2wide.realtime.processor import CycleResult, RealtimeResult

log = logging.getLogger("strategies.base")  # the name the log file has always shown


@dataclass(frozen=True)
class StrategyOptions:
    """Options of ``--mode concurrent|hybrid|streaming`` (each strategy uses the ones it needs)."""

    interval_minutes: float = 1.0
    run_for: float | None = None  # seconds; finish the current step and stop after this long
    workers: int = 1
    chunk_hours: int | None = None
    cutoff_time: str | None = None
    force: bool = False
    max_attempts: int = 3
    backoff_seconds: float = 1.0
    cursor: str = "created_time"
    settle_seconds: float = 2.0
    progress: bool = True
    install_signal_handlers: bool = True  # unused, kept for callers: only the CLI handles signals (cli/stopping.py)
    stop_when_caught_up: bool = False  # end once history is done and realtime has caught up (demo)
    throttle: ThrottleSettings = ThrottleSettings()  # the backfill's brakes (realtime is never throttled)
    on_cycle: Callable[[CycleResult], None] | None = None  # called after every realtime cycle (metrics)


@dataclass(frozen=True)
class StrategyResult:
    """What a strategy run did."""

    strategy: str
    seconds: float
    stopped_because: str
    backfill: BackfillResult | None = None
    backfill_complete: bool = False
    realtime: RealtimeResult | None = None
    stream_rows: int = 0  # streaming: narrow rows read by the cursors
    stream_failures: int = 0  # streaming: failed steps (each retried)
    stream_failing: bool = False  # streaming: the last round had a failed step (the run ended failing)

    @property
    def ok(self) -> bool:
        """True unless a chunk failed, the last realtime cycle failed, or streaming ended on a failed round."""
        if self.stream_failing or (self.backfill is not None and self.backfill.failed_chunks):
            return False
        return self.realtime is None or self.realtime.last is None or self.realtime.ok


class Strategy(ABC):
    """A way to run the migration; subclasses are listed in :data:`strategies.REGISTRY`."""

    name: ClassVar[str]
    summary: ClassVar[str]

    @abstractmethod
    def run(self, rt: Runtime, ship_ids: tuple[str, ...], opts: StrategyOptions,
            stop: threading.Event | None = None) -> StrategyResult:
        """Run until done, ``opts.run_for`` or ``stop`` (which the CLI sets on SIGINT/SIGTERM)."""


def deadline_timer(stop: threading.Event, seconds: float | None) -> threading.Timer | None:
    """A daemon timer that sets ``stop`` after ``seconds`` (``--run-for``); None when not asked."""
    if seconds is None:
        return None
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    return timer
