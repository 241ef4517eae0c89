"""What the benchmark scripts share: the database URL, settings for a schema pair, schema setup."""

from __future__ import annotations

import compileall
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from config import Settings, redact_url
from narrow2wide.common.config import psycopg2_url
from narrow2wide.db.database import qi
from narrow2wide.db.runtime import Runtime
from table_creator import create_tables

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent  # the checkout: main.py and the narrow2wide package


def compile_tool() -> None:
    """Write the bytecode of the tool's modules, as Python does at a first run, so that every timed process
    starts as it does on a user's machine from the second run on (an environment with
    ``PYTHONDONTWRITEBYTECODE`` set, as this project's test machines have, would otherwise compile every
    module at every start: about 0.1 s of a process)."""
    ok = compileall.compile_dir(ROOT / "narrow2wide", quiet=1)
    for module in ROOT.glob("*.py"):
        ok = compileall.compile_file(module, quiet=1) and ok
    if not ok:
        log.warning("some of the tool's modules did not compile; their processes compile them at start")


def database_url(given: str | None) -> str | None:
    """``--database-url``, else ``DATABASE_URL``, else ``None`` (the embedded server), as a psycopg2 URL."""
    url = given or os.environ.get("DATABASE_URL") or None
    if url is None:
        return None
    parsed = make_url(url)
    if parsed.drivername.split("+")[0] not in ("postgresql", "postgres"):
        raise SystemExit(f"not a PostgreSQL URL: {redact_url(url)}")
    return psycopg2_url(url)


def make_settings(url: str | None, source_schema: str, target_schema: str, state_dir: Path) -> Settings:
    """Settings for one schema pair, built directly as the tests do (no environment, no ``.env``)."""
    return Settings(
        database_url=url,
        target_database_url=None,
        source_schema=source_schema,
        source_table="tbl_data_timeseries",
        target_schema=target_schema,
        state_dir=state_dir / f"state-{target_schema}",
        embedded_pgdata=state_dir / "pgdata",
    )


def create_schemas(engine: Engine, names: list[str]) -> None:
    """Create the benchmark's schemas."""
    with engine.begin() as conn:
        for name in names:
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {qi(name)}"))


def drop_schemas(engine: Engine, names: list[str]) -> None:
    """Drop the benchmark's schemas and everything in them."""
    with engine.begin() as conn:
        for name in names:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {qi(name)} CASCADE"))
    log.info("dropped schemas %s", ", ".join(names))


def stop_embedded(pgdata: Path) -> None:
    """Stop the embedded server this process started (its data folder is removed with the temp folder)."""
    try:
        import pgserver

        pgserver.get_server(pgdata).cleanup()
    except Exception as exc:  # noqa: BLE001 - stopping is best effort; pgserver also stops it at exit
        log.debug("stopping the embedded server: %s", exc)


def clean_up(rt: Runtime, settings: Settings, schemas: list[str], tmp: Path, keep: bool) -> None:
    """End a benchmark run: drop its schemas (unless ``keep``), close the engines, stop an embedded server."""
    try:
        if keep:
            log.info("kept schemas %s and state %s", ", ".join(schemas), tmp)
        else:
            drop_schemas(rt.dbs.source, schemas)
    finally:
        rt.close()
        if settings.uses_embedded:
            stop_embedded(settings.embedded_pgdata)
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def fresh_target(rt: Runtime, analysis: Any, ship_ids: tuple[str, ...] = ()) -> None:
    """Empty wide tables (of ``ship_ids``, else every analysed ship), an empty ledger and no stored cutoff:
    the state a backfill pass of a benchmark starts from."""
    with rt.dbs.target.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {qi(rt.settings.target_schema)} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {qi(rt.settings.target_schema)}"))
    rt.settings.cutoff_file.unlink(missing_ok=True)
    create_tables(rt, ship_ids, analysis=analysis)
