"""Settings: defaults, the DB_* form, .env files, and every error named at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import load_settings, redact_url
from narrow2wide.common.errors import ConfigError


def test_defaults_use_the_embedded_server(tmp_path):
    s = load_settings({}, env_file=None)
    assert s.uses_embedded
    assert (s.source_schema, s.source_table) == ("tenant", "tbl_data_timeseries")
    assert s.target_schema == "tenant"
    assert s.chunk_hours == 24
    assert s.state_dir == Path("state")
    assert s.embedded_pgdata == Path("state/pgdata")
    assert s.ship_ids == ()


def test_db_parts_build_a_url_and_ship_list():
    s = load_settings(
        {"DB_HOST": "db.example", "DB_PORT": "6543", "DB_NAME": "fleet", "DB_USER": "mig", "DB_PASSWORD": "s3cr3t!",
         "TARGET_SHIP_IDS": " IMO1, IMO2 ,,", "CHUNK_HOURS": "6", "SOURCE_TABLE": "raw.narrow"},
        env_file=None,
    )
    assert s.database_url.startswith("postgresql+psycopg2://mig:")
    assert "db.example:6543/fleet" in s.database_url
    assert s.ship_ids == ("IMO1", "IMO2")
    assert s.chunk_hours == 6
    assert (s.source_schema, s.source_table) == ("raw", "narrow")


def test_env_file_is_read_and_environment_wins(tmp_path):
    f = tmp_path / ".env"
    f.write_text("CHUNK_HOURS=12\nTARGET_SCHEMA=wide\n")
    s = load_settings({"TARGET_SCHEMA": "other"}, env_file=f)
    assert s.chunk_hours == 12
    assert s.target_schema == "other"


def test_every_bad_variable_is_named_at_once():
    with pytest.raises(ConfigError) as err:
        load_settings(
            {"DATABASE_URL": "not a url", "CHUNK_HOURS": "abc", "SOURCE_TABLE": "x; drop table y",
             "TARGET_SCHEMA": "bad-name", "SOURCE_TIMEZONE": "Mars/Base"},
            env_file=None,
        )
    message = str(err.value)
    for name in ("DATABASE_URL", "CHUNK_HOURS", "SOURCE_TABLE", "TARGET_SCHEMA", "SOURCE_TIMEZONE"):
        assert name in message
    assert err.value.exit_code == 2


@pytest.mark.parametrize("value", ["0", "-3", "abc", ""])
def test_chunk_hours_must_be_positive(value):
    with pytest.raises(ConfigError, match="CHUNK_HOURS"):
        load_settings({"CHUNK_HOURS": value} if value else {"CHUNK_HOURS": " "}, env_file=None)


def test_non_postgres_url_is_refused():
    with pytest.raises(ConfigError, match="DATABASE_URL must point at PostgreSQL"):
        load_settings({"DATABASE_URL": "mysql://u:p@h/db"}, env_file=None)


def test_partial_db_parts_name_what_is_missing():
    with pytest.raises(ConfigError, match="DB_NAME, DB_USER"):
        load_settings({"DB_HOST": "h"}, env_file=None)


def test_redact_url_hides_the_password():
    assert "s3cr3t" not in redact_url("postgresql://u:s3cr3t@h:5432/db")
    assert "***" in redact_url("postgresql://u:s3cr3t@h:5432/db")
    assert "s3cr3t" not in redact_url("postgresql://u:s3cr3t@[broken")


def test_settings_built_in_code_with_a_bare_postgresql_url_run_on_psycopg2(settings):
    # SQLAlchemy 2.1 gives a bare postgresql:// psycopg 3, which the tool does not use (nor install)
    import dataclasses

    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from narrow2wide.db.database import open_databases

    bare = make_url(settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    dbs = open_databases(dataclasses.replace(settings, database_url=bare))
    try:
        assert dbs.source.dialect.driver == "psycopg2"
        with dbs.source.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar_one() == make_url(bare).database
    finally:
        dbs.source.dispose()
