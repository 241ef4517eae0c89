"""The command-line surface: help, usage errors, configuration errors, the embedded start."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from main import MODES
from narrow2wide.db.database import qualified
from table_creator import TABLES_META
from tests.cli_procs import clean_environ, invoke_cli

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_every_mode():
    result = invoke_cli(None, "--help")
    assert result.exit_code == 0
    for mode in ("schema-only", "tables-only", "migration-only", "realtime", "concurrent", "hybrid",
                 "streaming", "status", "validate", "demo"):
        assert mode in result.output
        assert mode in MODES


def test_unknown_mode_is_a_usage_error():
    result = invoke_cli(None, "--mode", "teleport")
    assert result.exit_code == 2
    assert "teleport" in result.output


def test_missing_mode_is_a_usage_error():
    assert invoke_cli(None).exit_code == 2


def test_bad_settings_exit_2_naming_each_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke_cli({"CHUNK_HOURS": "0", "SOURCE_TABLE": "1bad", "DATABASE_URL": ""}, "--mode", "status")
    assert result.exit_code == 2
    assert "CHUNK_HOURS" in result.output and "SOURCE_TABLE" in result.output


def test_unreachable_database_is_one_line_exit_1_without_password(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke_cli(
        {"DATABASE_URL": "postgresql://bob:hunter2secret@127.0.0.1:1/nodb", "STATE_DIR": str(tmp_path / "s")},
        "--mode", "demo")
    assert result.exit_code == 1
    assert "cannot connect" in result.output
    assert "Traceback" not in result.output
    assert "hunter2secret" not in result.output
    assert "hunter2secret" not in (tmp_path / "s" / "migrator.log").read_text()


def test_embedded_server_starts_and_demo_seeds_it(tmp_path):
    """With no database configured, the CLI starts pgserver in EMBEDDED_PGDATA and seeds it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DB_", "TEST_DATABASE"))}
    env.update({"STATE_DIR": str(tmp_path / "state"), "EMBEDDED_PGDATA": str(tmp_path / "pg")})
    out = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--mode", "demo", "--seed-only", "--ships", "1", "--channels", "4",
         "--days", "0.01"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "embedded PostgreSQL" in out.stderr
    assert "Seeded 228 rows" in out.stdout  # 1 ship x 4 channels x 57 samples of 15 s in 0.01 day
    assert (tmp_path / "pg" / "PG_VERSION").exists()


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_has_help_text(mode):
    result = invoke_cli(None, "--help")
    assert MODES[mode].split(":")[0][:20] in " ".join(result.output.split())


def test_declining_drop_tables_on_a_terminal_aborts_with_one_line_and_keeps_the_tables(runtime, prepared, cli_env,
                                                                                       tmp_path):
    """tables-only --drop-tables asks on a terminal; answering no exits 1 with one line, no traceback, and the
    wide tables and their rows stay as they were."""
    prepared(ships=1, channels=4)
    schema = runtime.settings.target_schema

    def tables() -> list[str]:
        with runtime.dbs.target.connect() as conn:
            return sorted(conn.execute(text(f"SELECT table_name FROM {qualified(schema, TABLES_META)}")).scalars())

    before = tables()
    with runtime.dbs.target.begin() as conn:  # a row the drop would lose
        conn.execute(text(f'INSERT INTO {qualified(schema, before[0])} ("created_time") VALUES (\'2024-10-01\')'))
    main, terminal = pty.openpty()
    env = {**clean_environ(), **cli_env}
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--mode", "tables-only", "--drop-tables"],
                            cwd=tmp_path, env=env, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(terminal)
    try:
        os.write(main, b"n\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(main)
    assert proc.returncode == 1, (out, err)
    assert b"Drop and recreate" in out
    assert err.decode().strip().splitlines()[-1] == "aborted: nothing was changed"
    assert b"Traceback" not in err
    assert tables() == before
    with runtime.dbs.target.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {qualified(schema, before[0])}")).scalar() == 1


@pytest.mark.parametrize("mode", ["streaming", "migration-only", "status"])
def test_the_insert_cursor_is_refused_where_no_realtime_cycle_would_use_it(mode):
    """--cursor server_created_time means something to realtime, concurrent and hybrid only; elsewhere it is a
    usage error (exit 2), not an option silently ignored (streaming would never see the late rows it asks for)."""
    result = invoke_cli({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}, "--mode", mode,
                        "--cursor", "server_created_time")
    assert result.exit_code == 2, result.output
    assert "--cursor applies to --mode realtime, concurrent, hybrid only" in result.output
