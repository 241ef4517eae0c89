"""Run each strategy on the same source while a live writer inserts rows; compare rate and lag.

Run from the repository root::

    python bench/strategies.py --database-url URL [--ships 2] [--channels 1000] [--days 0.25]

One source (history ending at the database's current time) is seeded once; each strategy then
gets a fresh target schema and state folder and runs with ``stop_when_caught_up`` while a
:class:`demo_data.LiveWriter` inserts a row per ship and channel every second. Printed per
strategy: seconds, backfill (or stream) narrow rows per second, realtime lag at the end, and
whether the tool's validation passed. The schemas are dropped at the end.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


from bench.common import create_schemas, database_url, drop_schemas, make_settings  # noqa: E402
from data_migrator import database_now, newest_wide_time  # noqa: E402
from narrow2wide.checks.validator import validate  # noqa: E402
from narrow2wide.db.database import Databases, make_engine  # noqa: E402
from narrow2wide.db.runtime import Runtime  # noqa: E402
from narrow2wide.demo.demo_data import DemoSpec, LiveWriter, seed_demo  # noqa: E402
from narrow2wide.strategies import REGISTRY, StrategyOptions, get_strategy  # noqa: E402
from schema_analyzer import analyze_source  # noqa: E402
from table_creator import create_tables, load_ship_layout  # noqa: E402

log = logging.getLogger("bench.strategies")


def lag_seconds(rt: Runtime, ship: str) -> float | None:
    """Database now minus the newest created_time in the ship's wide tables."""
    with rt.dbs.source.connect() as sconn:
        now = database_now(sconn, rt.source.time_type(sconn), rt.settings.source_timezone)
    with rt.dbs.target.connect() as conn:
        layout = load_ship_layout(conn, rt.settings.target_schema, ship)
        newest = newest_wide_time(conn, rt.settings.target_schema, {p.table: 0 for p in layout.parts})
    return None if newest is None else (now - newest).total_seconds()


def main() -> None:
    """Parse the options, seed once, run every strategy, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--ships", type=int, default=2)
    ap.add_argument("--channels", type=int, default=1000)
    ap.add_argument("--days", type=float, default=0.25)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    url = database_url(args.database_url)
    assert url is not None  # --database-url is required
    engine = make_engine(url, "narrow-to-wide bench")
    tag = uuid.uuid4().hex[:8]
    src = f"bench_strat_src_{tag}"
    targets: list[str] = []
    state_root = Path(tempfile.mkdtemp(prefix="bench-strategies-"))
    rows = []
    try:
        create_schemas(engine, [src])
        for name in sorted(REGISTRY):
            tgt = f"bench_strat_{name}_{tag}"
            targets.append(tgt)
            create_schemas(engine, [tgt])
            settings = make_settings(url, src, tgt, state_root)
            rt = Runtime(settings=settings, dbs=Databases(source=engine, target=engine))
            if len(targets) == 1:
                seed = seed_demo(engine, rt.source, DemoSpec(ships=args.ships, channels=args.channels,
                                                             days=args.days, offline_hours=0))
                print(f"seeded {seed.rows:,} rows: {args.ships} ships x {args.channels} channels x {args.days} days")
            analyze_source(rt)
            create_tables(rt)
            writer = LiveWriter(engine, rt.source, seed.ship_ids, args.channels, every_seconds=1.0,
                                late_every=5, late_minutes=3).start()
            try:
                began = time.monotonic()
                result = get_strategy(name).run(rt, (), StrategyOptions(
                    interval_minutes=0.25, progress=False, install_signal_handlers=False,
                    stop_when_caught_up=True))
                seconds = time.monotonic() - began
            finally:
                writer.stop()
            lag = max((lag_seconds(rt, s) or 0.0) for s in seed.ship_ids)
            if result.backfill is not None:
                rate = result.backfill.rows_per_second
            else:
                rate = result.stream_rows / seconds if seconds else 0.0
            ok = validate(rt, ()).ok
            rows.append((name, seconds, rate, lag, ok))
        print(f"{'strategy':<12}{'seconds':>10}{'rows/s':>14}{'lag s':>9}  validate")
        for name, seconds, rate, lag, ok in rows:
            print(f"{name:<12}{seconds:>10.1f}{rate:>14,.0f}{lag:>9.1f}  {'passed' if ok else 'FAILED'}")
    finally:
        drop_schemas(engine, [src, *targets])
        engine.dispose()
        shutil.rmtree(state_root, ignore_errors=True)


if __name__ == "__main__":
    main()
