"""Fixtures: a real PostgreSQL (TEST_DATABASE_URL, or an embedded pgserver) and a schema per test."""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings

import pytest
from sqlalchemy import text

from config import Settings
from narrow2wide.db.database import Databases, make_engine, qi
from narrow2wide.db.runtime import Runtime


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--full``: the full reliability suite (many kills, minutes of load) instead of the quick one."""
    parser.addoption("--full", action="store_true", default=False,
                     help="run the full fault/load suite (tens of minutes); default is the quick version")


@pytest.fixture(scope="session")
def full_run(request: pytest.FixtureRequest) -> bool:
    """True when the full reliability suite was asked for (``pytest --full`` or MIGRATOR_FULL_TESTS=1)."""
    return bool(request.config.getoption("--full")) or os.environ.get("MIGRATOR_FULL_TESTS") == "1"


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A PostgreSQL URL: TEST_DATABASE_URL, else a throw-away embedded server."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url.replace("postgresql://", "postgresql+psycopg2://", 1)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    folder = tempfile.mkdtemp(prefix="migrator-test-pg-")
    server = pgserver.get_server(folder, cleanup_mode="delete")
    yield server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    server.cleanup()


@pytest.fixture(scope="session")
def engine(pg_url):
    """One engine for the whole session."""
    eng = make_engine(pg_url, "migrator-tests")
    yield eng
    eng.dispose()


@pytest.fixture
def schemas(engine, request):
    """A fresh (source, target) schema pair for this test, dropped afterwards."""
    tag = uuid.uuid4().hex[:10]
    src, tgt = f"src_{tag}", f"tgt_{tag}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {qi(src)}"))
        conn.execute(text(f"CREATE SCHEMA {qi(tgt)}"))
    yield src, tgt
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {qi(src)} CASCADE"))
        conn.execute(text(f"DROP SCHEMA IF EXISTS {qi(tgt)} CASCADE"))


@pytest.fixture
def settings(pg_url, schemas, tmp_path) -> Settings:
    """Settings pointing at this test's schemas and a private STATE_DIR."""
    src, tgt = schemas
    return Settings(
        database_url=pg_url,
        target_database_url=None,
        source_schema=src,
        source_table="tbl_data_timeseries",
        target_schema=tgt,
        state_dir=tmp_path / "state",
        embedded_pgdata=tmp_path / "pgdata",
    )


@pytest.fixture
def runtime(settings, engine) -> Runtime:
    """A runtime on the session engine (not disposed per test)."""
    return Runtime(settings=settings, dbs=Databases(source=engine, target=engine))


@pytest.fixture
def ship_plan(runtime):
    """``ship_plan(ship)``: the ship's pivot plan, as the migrator builds it from the wide tables' metadata."""
    from narrow2wide.engine.window_migrator import ShipPlanCache

    def make(ship: str):
        with runtime.dbs.target.connect() as conn:
            return ShipPlanCache(runtime).get(conn, ship)

    return make


@pytest.fixture
def cli_env(settings) -> dict[str, str]:
    """Environment variables that make the CLI use this test's schemas."""
    return {
        "DATABASE_URL": settings.database_url or "",
        "SOURCE_TABLE": f"{settings.source_schema}.{settings.source_table}",
        "TARGET_SCHEMA": settings.target_schema,
        "STATE_DIR": str(settings.state_dir),
    }


@pytest.fixture
def prepared(runtime):
    """Seed a small fleet, analyse it and create its wide tables; returns the seed result."""
    from datetime import datetime

    from narrow2wide.demo.demo_data import DemoSpec, seed_demo
    from schema_analyzer import analyze_source
    from table_creator import create_tables

    def make(ships: int = 2, channels: int = 12, days: float = 0.25, offline_hours: float = 1.0,
             end: datetime = datetime(2024, 10, 2), **kw):
        seed = seed_demo(runtime.dbs.source, runtime.source,
                         DemoSpec(ships=ships, channels=channels, days=days, offline_hours=offline_hours,
                                  late_channel_share=0.2, end=end, **kw))
        analyze_source(runtime)
        create_tables(runtime)
        return seed

    return make


@pytest.fixture
def procs(tmp_path, cli_env, engine, schemas):
    """Start CLI processes; at teardown kill the survivors and end their sleeping backends."""
    from tests.cli_procs import Procs

    p = Procs(tmp_path, cli_env)
    yield p
    p.kill_all()
    with engine.begin() as conn:  # a backend orphaned by a kill may sit in pg_sleep holding locks
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND application_name LIKE 'narrow-to-wide%' AND strpos(query, :s) > 0"), {"s": schemas[1]})
