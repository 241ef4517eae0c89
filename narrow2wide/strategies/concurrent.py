"""``--mode concurrent``: realtime from the cutoff and the backfill of history before it, at the same time."""

from __future__ import annotations

import logging
import threading
import time

from narrow2wide.backfill.progress import LedgerProgress
from narrow2wide.backfill.runner import BackfillOptions, BackfillResult, RunGate, drain_ledger, prepare_backfill
from narrow2wide.db.catalogue import resolve_ships
from narrow2wide.db.runtime import Runtime
from narrow2wide.realtime.processor import CycleResult, RealtimeOptions, RealtimeResult, run_realtime
from narrow2wide.strategies.base import Strategy, StrategyOptions, StrategyResult, deadline_timer

log = logging.getLogger("strategies.concurrent")  # the name the log file has always shown


class RealtimeThread:
    """The realtime processor in a thread, stopped by the strategy's ``stop`` event."""

    def __init__(self, rt: Runtime, ships: list[str], opts: StrategyOptions, stop: threading.Event):
        self.stop = stop
        self.result: RealtimeResult | None = None
        self.error: BaseException | None = None
        self.cycles_ok = 0
        self.last: CycleResult | None = None
        self._changed = threading.Condition()
        self._observer = opts.on_cycle
        options = RealtimeOptions(interval_minutes=opts.interval_minutes, cursor=opts.cursor,
                                  settle_seconds=opts.settle_seconds)
        self._thread = threading.Thread(target=self._run, args=(rt, tuple(ships), options), name="realtime",
                                        daemon=True)

    def _run(self, rt: Runtime, ships: tuple[str, ...], options: RealtimeOptions) -> None:
        try:
            self.result = run_realtime(rt, ships, options, self.stop, on_cycle=self._on_cycle)
        except BaseException as exc:  # noqa: BLE001 - re-raised by join() in the strategy's thread
            self.error = exc
            self.stop.set()
        finally:
            with self._changed:
                self._changed.notify_all()

    def _on_cycle(self, cycle: CycleResult) -> None:
        if self._observer is not None:
            self._observer(cycle)
        with self._changed:
            self.last = cycle
            self.cycles_ok += 1 if cycle.ok else 0
            self._changed.notify_all()

    def start(self) -> RealtimeThread:
        """Start the processor."""
        self._thread.start()
        return self

    def wait_for_good_cycles(self, after: int, timeout: float | None = None) -> bool:
        """Wait until a successful cycle beyond ``after`` good ones (or a stop); True when it came."""
        with self._changed:
            return self._changed.wait_for(lambda: self.cycles_ok > after or self.stop.is_set()
                                          or not self._thread.is_alive(), timeout) and self.cycles_ok > after

    def join(self) -> RealtimeResult | None:
        """Wait for the processor to stop; re-raises its failure."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.result


class ConcurrentStrategy(Strategy):
    """Fix each ship's cutoff, then run realtime from it and the chunked backfill before it together."""

    name = "concurrent"
    summary = "realtime from the cutoff and the backfill of history at the same time (recommended)"

    def run(self, rt: Runtime, ship_ids: tuple[str, ...], opts: StrategyOptions,
            stop: threading.Event | None = None) -> StrategyResult:
        """See the class docstring; the backfill ends when the ledger is drained, realtime on ``stop``."""
        started = time.monotonic()
        stop = stop or threading.Event()
        ships = resolve_ships(rt, ship_ids)
        timer = deadline_timer(stop, opts.run_for)
        cutoffs = prepare_backfill(rt, ships, BackfillOptions(cutoff_time=opts.cutoff_time, force=opts.force,
                                                              chunk_hours=opts.chunk_hours, throttle=opts.throttle))
        realtime = RealtimeThread(rt, ships, opts, stop).start()
        try:
            backfill = self.backfill(rt, ships, cutoffs, opts, stop)
            drained = not stop.is_set() and all(s.pending == 0 for s in backfill.ships)
            complete = drained and not backfill.failed_chunks
            if drained:
                log.info("backfill %s: %s rows in %.1f s (%s rows/s); realtime keeps running%s",
                         "done" if complete else f"ended with {len(backfill.failed_chunks)} failed chunk(s)",
                         f"{backfill.rows_read:,}", backfill.seconds, f"{backfill.rows_per_second:,.0f}",
                         "" if opts.stop_when_caught_up else " until stopped (Ctrl-C)")
            reason = None
            if drained and opts.stop_when_caught_up:
                # one full realtime cycle after the backfill: then both sides are current
                if realtime.wait_for_good_cycles(realtime.cycles_ok):
                    reason = "caught-up"
                    stop.set()
            while not stop.wait(0.5):
                pass
        finally:
            stop.set()
            result = realtime.join()
            if timer is not None:
                timer.cancel()
        if reason is None:
            reason = "run-for" if opts.run_for is not None and time.monotonic() - started >= opts.run_for else "signal"
        return StrategyResult(self.name, round(time.monotonic() - started, 3), reason, backfill, complete, result)

    def backfill(self, rt: Runtime, ships: list[str], cutoffs: dict, opts: StrategyOptions,
                 stop: threading.Event) -> BackfillResult:
        """The chunked backfill of every ship (until drained or ``stop``)."""
        return drain_ledger(rt, ships, cutoffs, opts.workers, opts.max_attempts, opts.backoff_seconds,
                            stop=stop, reporter=LedgerProgress(rt, ships) if opts.progress else None,
                            run_gate=RunGate(opts.throttle))
