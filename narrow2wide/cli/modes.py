"""One handler per ``--mode``: open the runtime, call one library function, return its result.

Kept apart from ``main.py`` so that the CLI module stays a parser and printer only.
Each handler returns ``(result, exit_code)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

from narrow2wide.cli.stopping import stop_on_signals
from narrow2wide.common.config import Settings
from narrow2wide.db.runtime import open_runtime
from narrow2wide.ops.observe import observed_run
from narrow2wide.ops.throttle import ThrottleSettings
from narrow2wide.strategies import REGISTRY

Handler = Callable[[Settings, dict], tuple[object, int]]


def throttle_of(opts: dict) -> ThrottleSettings:
    """The backfill's brakes from ``--max-rows-per-second``, ``--throttle-query`` and ``--max-source-active``."""
    return ThrottleSettings(max_rows_per_second=opts.get("max_rows_per_second"),
                            throttle_query=opts.get("throttle_query"),
                            max_source_active=opts.get("max_source_active"))


def metrics_port(settings: Settings, opts: dict) -> int | None:
    """``--metrics-port``, else METRICS_PORT; None (no endpoint) for a one-shot ``realtime --once``."""
    if opts.get("once"):
        return None
    return opts.get("metrics_port") or settings.metrics_port


def demo(settings: Settings, opts: dict) -> tuple[object, int]:
    """Seed a generated fleet (``--seed-only``), or run the whole guide on it."""
    from narrow2wide.demo.demo_data import DemoSpec, seed_demo
    from narrow2wide.demo.guide import run_demo

    spec = DemoSpec(ships=opts["ships"], channels=opts["channels"], days=opts["days"])
    with open_runtime(settings) as rt:
        if opts["seed_only"]:
            return seed_demo(rt.dbs.source, rt.source, spec), 0
        with stop_on_signals(threading.Event()) as stop:
            result = run_demo(rt, spec, stop=stop)
    return result, 0 if result.ok else 1


HANDLERS: dict[str, Handler] = {
    "demo": demo,
}


def schema_only(settings: Settings, opts: dict) -> tuple[object, int]:
    """Analyse the source and write the schema file."""
    from narrow2wide.schema.analyzer import analyze_source

    with open_runtime(settings) as rt:
        return analyze_source(rt, settings.ship_ids, opts["sample_hours"], opts["column_style"],
                              opts["routing_file"]), 0


def tables_only(settings: Settings, opts: dict) -> tuple[object, int]:
    """Create the wide tables from the schema file."""
    import sys

    import click

    from narrow2wide.schema.tables import create_tables

    if opts["drop_tables"] and not opts["yes"] and sys.stdin.isatty():
        click.confirm("Drop and recreate the wide tables this tool created (their data is lost)?", abort=True)
    with open_runtime(settings) as rt:
        return create_tables(rt, settings.ship_ids, drop=opts["drop_tables"]), 0


HANDLERS.update({"schema-only": schema_only, "tables-only": tables_only})


def migration_only(settings: Settings, opts: dict) -> tuple[object, int]:
    """Backfill history before the cutoff."""
    from narrow2wide.backfill.runner import BackfillOptions, run_backfill

    options = BackfillOptions(cutoff_time=opts["cutoff_time"], force=opts["force"], chunk_hours=opts["chunk_hours"],
                              workers=opts["workers"], retry_failed=opts["retry_failed"], throttle=throttle_of(opts))
    with open_runtime(settings) as rt:
        if opts.get("dry_run"):
            from narrow2wide.backfill.dry_run import plan_backfill

            return plan_backfill(rt, settings.ship_ids, options, "migration-only"), 0
        with observed_run(rt, metrics_port(settings, opts), settings.metrics_host, settings.ship_ids):
            result = run_backfill(rt, settings.ship_ids, options)
    # chunks left pending after the workers ended (a worker process died): not a finished run
    return result, 1 if result.failed_chunks or any(s.pending for s in result.ships) else 0


def status(settings: Settings, opts: dict) -> tuple[object, int]:
    """Per-ship progress."""
    from narrow2wide.checks.status import migration_status

    with open_runtime(settings) as rt:
        return migration_status(rt, settings.ship_ids), 0


def validate(settings: Settings, opts: dict) -> tuple[object, int]:
    """Compare the wide tables with the source."""
    from narrow2wide.checks.validator import validate as run_validate

    with open_runtime(settings) as rt:
        report = run_validate(rt, settings.ship_ids, repair=opts["repair"])
    return report, 0 if report.ok else 1


def pause(settings: Settings, opts: dict) -> tuple[object, int]:
    """Pause the backfill of the ``--ship-id`` ships (every ship when none)."""
    from narrow2wide.ops.pausing import pause_backfill

    with open_runtime(settings) as rt:
        return pause_backfill(rt, settings.ship_ids), 0


def resume(settings: Settings, opts: dict) -> tuple[object, int]:
    """Resume a paused backfill (exit 0 when nothing was paused, saying so)."""
    from narrow2wide.ops.pausing import resume_backfill

    with open_runtime(settings) as rt:
        return resume_backfill(rt, settings.ship_ids), 0


HANDLERS.update({"migration-only": migration_only, "status": status, "validate": validate, "pause": pause,
                 "resume": resume})


def realtime(settings: Settings, opts: dict) -> tuple[object, int]:
    """Keep the wide tables current (long-lived, or one cycle with --once)."""
    from narrow2wide.realtime.processor import RealtimeOptions, run_realtime

    options = RealtimeOptions(interval_minutes=opts["interval"], once=opts["once"], run_for=opts["run_for"],
                              cursor=opts["cursor"], wait_for_lock=opts["wait_lock"])
    with (open_runtime(settings, "narrow-to-wide realtime") as rt,
          observed_run(rt, metrics_port(settings, opts), settings.metrics_host, settings.ship_ids,
                       realtime_interval=opts["interval"] * 60, backfill=False) as on_cycle,
          stop_on_signals(threading.Event()) as stop):
        result = run_realtime(rt, settings.ship_ids, options, stop, on_cycle=on_cycle)
    return result, 0 if (result.ok or not opts["once"]) else 1


HANDLERS["realtime"] = realtime


def run_strategy(settings: Settings, opts: dict, name: str) -> tuple[object, int]:
    """``--mode concurrent|hybrid|streaming``: the strategy of that name from :data:`strategies.REGISTRY`."""
    from narrow2wide.strategies import StrategyOptions, get_strategy

    strategy = get_strategy(name)
    if opts.get("dry_run"):
        return dry_run_strategy(settings, opts, name)
    realtime = name != "streaming"  # streaming has no cycles: its health follows the polls of the target
    with (open_runtime(settings, f"narrow-to-wide {name}") as rt,
          observed_run(rt, metrics_port(settings, opts), settings.metrics_host, settings.ship_ids,
                       realtime_interval=opts["interval"] * 60 if realtime else None) as on_cycle,
          stop_on_signals(threading.Event()) as stop):
        options = StrategyOptions(
            interval_minutes=opts["interval"], run_for=opts["run_for"], workers=opts["workers"],
            chunk_hours=opts["chunk_hours"], cutoff_time=opts["cutoff_time"], force=opts["force"],
            cursor=opts["cursor"], throttle=throttle_of(opts), on_cycle=on_cycle)
        result = strategy.run(rt, settings.ship_ids, options, stop)
    return result, 0 if result.ok else 1


def dry_run_strategy(settings: Settings, opts: dict, name: str) -> tuple[object, int]:
    """``--mode concurrent|hybrid --dry-run``: the backfill's plan (realtime would start at the cutoff)."""
    from narrow2wide.backfill.dry_run import plan_backfill
    from narrow2wide.backfill.runner import BackfillOptions

    options = BackfillOptions(cutoff_time=opts["cutoff_time"], force=opts["force"], chunk_hours=opts["chunk_hours"],
                              workers=opts["workers"], throttle=throttle_of(opts))
    with open_runtime(settings) as rt:
        return plan_backfill(rt, settings.ship_ids, options, name), 0


STRATEGY_MODES = tuple(REGISTRY)  # one --mode per registered strategy
for _name in STRATEGY_MODES:
    HANDLERS[_name] = partial(run_strategy, name=_name)
