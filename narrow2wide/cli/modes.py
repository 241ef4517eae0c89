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
from narrow2wide.strategies import REGISTRY

Handler = Callable[[Settings, dict], tuple[object, int]]


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
                              workers=opts["workers"], retry_failed=opts["retry_failed"])
    with open_runtime(settings) as rt:
        result = run_backfill(rt, settings.ship_ids, options)
    return result, 1 if result.failed_chunks else 0


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


HANDLERS.update({"migration-only": migration_only, "status": status, "validate": validate})


def realtime(settings: Settings, opts: dict) -> tuple[object, int]:
    """Keep the wide tables current (long-lived, or one cycle with --once)."""
    from narrow2wide.realtime.processor import RealtimeOptions, run_realtime

    options = RealtimeOptions(interval_minutes=opts["interval"], once=opts["once"], run_for=opts["run_for"],
                              cursor=opts["cursor"], wait_for_lock=opts["wait_lock"])
    with open_runtime(settings, "narrow-to-wide realtime") as rt, stop_on_signals(threading.Event()) as stop:
        result = run_realtime(rt, settings.ship_ids, options, stop)
    return result, 0 if (result.ok or not opts["once"]) else 1


HANDLERS["realtime"] = realtime


def run_strategy(settings: Settings, opts: dict, name: str) -> tuple[object, int]:
    """``--mode concurrent|hybrid|streaming``: the strategy of that name from :data:`strategies.REGISTRY`."""
    from narrow2wide.strategies import StrategyOptions, get_strategy

    strategy = get_strategy(name)
    options = StrategyOptions(
        interval_minutes=opts["interval"], run_for=opts["run_for"], workers=opts["workers"],
        chunk_hours=opts["chunk_hours"], cutoff_time=opts["cutoff_time"], force=opts["force"],
        cursor=opts["cursor"])
    with open_runtime(settings, f"narrow-to-wide {name}") as rt, stop_on_signals(threading.Event()) as stop:
        result = strategy.run(rt, settings.ship_ids, options, stop)
    return result, 0 if result.ok else 1


STRATEGY_MODES = tuple(REGISTRY)  # one --mode per registered strategy
for _name in STRATEGY_MODES:
    HANDLERS[_name] = partial(run_strategy, name=_name)
