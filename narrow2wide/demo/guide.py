"""``--mode demo``: the whole guide on a generated fleet while a writer keeps inserting live rows.

Seed history, start a live writer (with late rows), schema-only, tables-only, concurrent until the
backfill is done and realtime has caught up, stop the writer, one last realtime cycle, then status
and validation. Each step is the library function its ``--mode`` calls.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from narrow2wide.checks.status import StatusReport, migration_status
from narrow2wide.checks.validator import ValidationReport, validate
from narrow2wide.db.runtime import Runtime
from narrow2wide.demo.demo_data import DemoSpec, LiveWriter, SeedResult, seed_demo
from narrow2wide.realtime.processor import RealtimeOptions, RealtimeResult, run_realtime
from narrow2wide.schema.analyzer import analyze_source
from narrow2wide.schema.tables import create_tables
from narrow2wide.strategies import StrategyOptions, StrategyResult, get_strategy

log = logging.getLogger("demo_guide")  # the name the log file has always shown


@dataclass(frozen=True)
class DemoResult:
    """What the demo did, step by step."""

    seed: SeedResult
    live_rows: int
    steps: tuple[tuple[str, float], ...]  # (step, seconds)
    strategy: StrategyResult
    final_cycle: RealtimeResult
    status: StatusReport
    validation: ValidationReport
    seconds: float

    @property
    def ok(self) -> bool:
        """True when the strategy, the last cycle and the validation all succeeded."""
        return self.strategy.ok and self.final_cycle.ok and self.validation.ok


def run_demo(rt: Runtime, spec: DemoSpec | None = None, interval_minutes: float = 0.05,
             stop: threading.Event | None = None) -> DemoResult:
    """Run the guide end to end on ``spec``'s fleet (see the module docstring).

    ``stop`` (set by the CLI on SIGINT/SIGTERM) ends the concurrent step early, as Ctrl-C does.
    """
    spec = spec or DemoSpec()
    began = time.monotonic()
    steps: list[tuple[str, float]] = []

    def step(name: str, t0: float) -> None:
        steps.append((name, round(time.monotonic() - t0, 2)))
        log.info("demo: %s done in %.1f s", name, steps[-1][1])

    t0 = time.monotonic()
    seed = seed_demo(rt.dbs.source, rt.source, spec)
    step("seed history", t0)
    writer = LiveWriter(rt.dbs.source, rt.source, seed.ship_ids, spec.channels, every_seconds=1.0,
                        late_every=5, late_minutes=3, timezone=rt.settings.source_timezone).start()
    log.info("demo: a live writer inserts a row per ship and channel every second (and late ones)")
    try:
        t0 = time.monotonic()
        analyze_source(rt)
        step("schema-only", t0)
        t0 = time.monotonic()
        create_tables(rt)
        step("tables-only", t0)
        t0 = time.monotonic()
        strategy = get_strategy("concurrent").run(rt, (), StrategyOptions(
            interval_minutes=interval_minutes, stop_when_caught_up=True), stop)
        step("concurrent (backfill + realtime until caught up)", t0)
    finally:
        live_rows = writer.stop()
    t0 = time.monotonic()
    final = run_realtime(rt, (), RealtimeOptions(once=True, settle_seconds=0))
    step("last realtime cycle", t0)
    t0 = time.monotonic()
    status = migration_status(rt)
    validation = validate(rt)
    step("status and validate", t0)
    return DemoResult(seed, live_rows, tuple(steps), strategy, final, status, validation,
                      round(time.monotonic() - began, 2))
