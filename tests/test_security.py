"""Security: no SQL injection, no password in any output, least privilege, and --drop-tables drops only ours.

Every test drives the real CLI (``main.cli``: in this process through click's runner, or as ``main.py``
subprocesses where the raw stdout/stderr matter) against the real PostgreSQL of the session
(TEST_DATABASE_URL or the embedded server) and checks the wide tables with the oracle
(:func:`tests.wide_check.compare`) run as the superuser engine. Roles are cluster-wide: each test makes
its own with a random name and drops it at teardown.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine, make_url

from config import Settings
from narrow2wide.db.database import qi, qualified, qualified_raw, server_now
from narrow2wide.db.narrow_source import SourceTable
from narrow2wide.demo.demo_data import DemoSpec, SeedResult, seed_demo
from tests.cli_procs import Procs, clean_environ, invoke_cli
from tests.wide_check import compare

MakeRole = Callable[..., str]
RunCli = Callable[..., tuple[int, str, str]]


# ----------------------------------------------------------------------------------------------
# helpers


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _role_url(pg_url: str, role: str, password: str | None = None) -> str:
    """The session's URL (TCP or the embedded server's socket) logging in as ``role``."""
    return make_url(pg_url).set(username=role, password=password).render_as_string(hide_password=False)


def _current_database(engine: Engine) -> str:
    with engine.connect() as conn:
        return conn.execute(text("SELECT current_database()")).scalar_one()


def readme_grants(src: str, tgt: str, role: str) -> list[str]:
    """The README's "Database permissions" section, with the test's source and target schemas."""
    return [
        f"GRANT USAGE ON SCHEMA {qi(src)} TO {qi(role)}",
        f"GRANT SELECT ON {qualified(src, 'tbl_data_timeseries')} TO {qi(role)}",
        f"GRANT USAGE, CREATE ON SCHEMA {qi(tgt)} TO {qi(role)}",  # TARGET_SCHEMA
    ]


def working_grants(engine: Engine, src: str, tgt: str, role: str) -> list[str]:
    """The least the tool needs today: the README's GRANTs plus CREATE on the database.

    ``table_creator.ensure_metadata`` runs ``CREATE SCHEMA IF NOT EXISTS`` before every table
    step, and PostgreSQL checks CREATE on the database before it looks whether the schema exists.
    CONNECT and TEMPORARY (the merge stages are temporary tables) come from PUBLIC's defaults.
    """
    return readme_grants(src, tgt, role) + [f"GRANT CREATE ON DATABASE {qi(_current_database(engine))} TO {qi(role)}"]


@pytest.fixture
def make_role(engine: Engine, schemas: tuple[str, str]) -> Iterator[MakeRole]:
    """Create login roles with given GRANTs; at teardown end their sessions, REASSIGN/DROP OWNED, DROP ROLE."""
    created: list[str] = []

    def make(grants: Callable[[str], list[str]], password: str | None = None) -> str:
        role = f"mig_{_tag()}"
        with engine.begin() as conn:  # one transaction: a failing GRANT leaves no role behind
            conn.execute(text(f"CREATE ROLE {qi(role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                              + (" PASSWORD :pw" if password else "")), {"pw": password})
            for grant in grants(role):
                conn.execute(text(grant))
        created.append(role)
        return role

    yield make
    for role in created:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                         {"r": role})
        with engine.begin() as conn:
            conn.execute(text(f"REASSIGN OWNED BY {qi(role)} TO CURRENT_USER"))
            conn.execute(text(f"DROP OWNED BY {qi(role)}"))
            conn.execute(text(f"DROP ROLE {qi(role)}"))


@pytest.fixture
def run(cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunCli:
    """The CLI in this process (click's runner, no interpreter start): ``run(*args, **env)`` gives
    (exit code, stdout, stderr). The tool's settings come only from ``cli_env`` and ``env``."""
    monkeypatch.chdir(tmp_path)  # no stray .env file
    inherited = {k: None for k in os.environ if k not in clean_environ()}

    def invoke(*args: str, **env: str) -> tuple[int, str, str]:
        result = invoke_cli({**inherited, **cli_env, **env}, *args)
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)  # setup_logging() opened STATE_DIR/migrator.log for this run
            handler.close()
        err = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            err += f"\n(raised {result.exception!r})"
        return result.exit_code, result.stdout, err

    return invoke


def _one_line_error(code: int, out: str, err: str, expected_code: int) -> str:
    """Assert a run ended with exactly one ``error:`` line on stderr and nothing on stdout; return it."""
    assert code == expected_code, (code, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert out == ""
    return lines[0]


def _create_canary(engine: Engine, src: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {qualified(src, 'canary')} (note text)"))
        conn.execute(text(f"INSERT INTO {qualified(src, 'canary')} VALUES ('alive')"))


def _assert_nothing_executed(engine: Engine, src: str, tgt: str, pwned: str, source_rows: int | None = None) -> None:
    """The canary is alive, no payload table exists anywhere, both schemas and every source row are still there."""
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT note FROM {qualified(src, 'canary')}")).scalar_one() == "alive"
        made = conn.execute(text("SELECT relname FROM pg_class WHERE relname LIKE :p"), {"p": pwned + "%"}).scalars()
        assert list(made) == []
        schemas = set(conn.execute(text("SELECT nspname FROM pg_namespace WHERE nspname IN (:a, :b)"),
                                   {"a": src, "b": tgt}).scalars())
        assert schemas == {src, tgt}
        if source_rows is not None:
            n = conn.execute(text(f"SELECT count(*) FROM {qualified(src, 'tbl_data_timeseries')}")).scalar_one()
            assert n == source_rows


def _insert_rows(engine: Engine, source: SourceTable, ships: list[str], channels: list[tuple[str, str]],
                 start: datetime, end: datetime, strings: list[str], step_seconds: int = 60) -> int:
    """One row per ship, channel and step in [start, end); String (and unknown-format) rows cycle ``strings``."""
    with engine.begin() as conn:
        result = conn.execute(text(
            f"""INSERT INTO {source.sql} (ship_id, data_channel_id, created_time, server_created_time,
                    bool_v, str_v, long_v, double_v, value_format)
                SELECT s.ship, c.ch, t.ts, t.ts + interval '1 second',
                    CASE WHEN c.fmt = 'Boolean' THEN (e.ep / 60 + c.k) % 2 = 0 END,
                    CASE WHEN c.fmt NOT IN ('Boolean', 'Integer', 'Decimal')
                         THEN (CAST(:strs AS text[]))[1 + (e.ep / 60 + c.k) % cardinality(CAST(:strs AS text[]))] END,
                    CASE WHEN c.fmt = 'Integer' THEN (e.ep / 60 + c.k * 7) % 100000 - 500 END,
                    CASE WHEN c.fmt = 'Decimal' THEN ((e.ep / 60) % 997 + c.k) / 8.0 - 3 END,
                    c.fmt
                FROM unnest(CAST(:ships AS text[])) AS s(ship)
                CROSS JOIN unnest(CAST(:chs AS text[]), CAST(:fmts AS text[])) WITH ORDINALITY AS c(ch, fmt, k)
                CROSS JOIN generate_series(CAST(:a AS timestamp), CAST(:b AS timestamp) - make_interval(secs => :st),
                                           make_interval(secs => :st)) AS t(ts)
                CROSS JOIN LATERAL (SELECT CAST(extract(epoch FROM t.ts) AS bigint) AS ep) e"""),
            {"ships": ships, "chs": [c for c, _ in channels], "fmts": [f for _, f in channels], "a": start,
             "b": end, "st": step_seconds, "strs": strings})
        return int(result.rowcount)


def _db_minute(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return server_now(conn, "UTC").replace(second=0, microsecond=0)


def _source_rows(engine: Engine, src: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {qualified(src, 'tbl_data_timeseries')}")).scalar_one())


# ----------------------------------------------------------------------------------------------
# 1. SQL injection through data values, channel ids, ship ids and settings


@pytest.mark.parametrize("kind", ["quotes", "placeholders"])
def test_hostile_ship_ids_channel_ids_and_values_migrate_exactly_and_execute_nothing(
        kind: str, engine: Engine, settings: Settings, schemas: tuple[str, str], run: RunCli, tmp_path: Path) -> None:
    """Ship ids (``quotes``: SQL that closes its quotes; ``placeholders``: bind-parameter and driver
    placeholders, a backslash, path parts), channel ids, value_formats and str_v values full of SQL (quotes,
    semicolons, DROP/CREATE, placeholders, COPY markers, newlines, backslashes) go through every step
    (schema-only, tables-only, migration-only, realtime --once with a new hostile channel, status, validate;
    ships chosen by --ship-id and by TARGET_SHIP_IDS) as plain data: the oracle finds every cell exact, the
    canary table, both schemas and every source row are intact, no payload table exists, reject files stay
    under STATE_DIR/rejects, and a hostile --cutoff-time is refused with one line (exit 2)."""
    src, tgt = schemas
    tag = _tag()
    pwned = f"pwned_{tag}"
    _create_canary(engine, src)
    ships = {
        # SQL quoting: identifiers and literals that close their quotes
        "quotes": [f'x"; DROP TABLE {src}.canary; --', f"'); DROP SCHEMA {src} CASCADE; --"],
        # what drivers and SQLAlchemy read inside SQL text (bind parameters, format placeholders), a
        # backslash, and path parts for the reject files; one short, one past an identifier's 63 bytes
        "placeholders": ["IMO:a %s %(p)s $1 \\", f"../../{tag} :ship %(p)s %s $1 \\ ; CREATE TABLE {pwned}_s ();"],
    }[kind]
    hostile_format = f"'); CREATE TABLE {pwned}_f (); --"  # an unknown value_format: rows rejected
    channels = [
        (f'a"; DROP TABLE {src}.canary; --', "Decimal"),
        (f"'); DROP SCHEMA {tgt} CASCADE; --", "Integer"),
        ("b'||(SELECT pg_sleep(5))||'", "Boolean"),
        (":ship %(x)s %s $1 \\ \\N", "String"),
        ("created_time", "Decimal"),  # the wide tables' own time column
        ("Robert'); CREATE TABLE " + pwned + "_c (); -- " * 3, "String"),  # longer than an identifier
        (f"rejected'; CREATE TABLE {pwned}_r (); --", hostile_format),
    ]
    strings = [f"'); DROP TABLE {src}.canary; --", f"x'; CREATE TABLE {pwned}_v (); --", "\\.", "\\N", "tab\there",
               "line\nbreak\r\n", 'quote"d', "", "%(x)s %s :name $1", "\\", "\u00c6r\u00f8 stra\u00dfe"]
    end = _db_minute(engine) - timedelta(minutes=1)
    start, cutoff = end - timedelta(hours=3), end - timedelta(hours=1)
    source = SourceTable(src, "tbl_data_timeseries")
    with engine.begin() as conn:
        source.create(conn)
    rows = _insert_rows(engine, source, ships, channels, start, end, strings)

    code, out, err = run("--mode", "schema-only")
    assert code == 0, err
    for ship in ships:
        assert ship in out
    code, out, err = run("--mode", "tables-only")
    assert code == 0, err
    # a channel that appears after the tables exist: realtime gives it a column on the fly
    new_channel = [(f'n"; CREATE TABLE {pwned}_n (); --', "Decimal")]
    rows += _insert_rows(engine, source, ships, new_channel, cutoff + timedelta(minutes=5), end, strings)

    code, out, err = run("--mode", "migration-only", "--cutoff-time", str(cutoff))
    assert code == 0, err
    code, out, err = run("--mode", "realtime", "--once", *[a for s in ships for a in ("--ship-id", s)])
    assert code == 0, (out, err)
    code, out, err = run("--mode", "validate", TARGET_SHIP_IDS=",".join(ships))
    assert code == 0, (out, err)
    assert "Validation passed." in out and out.count("OK   ") == len(ships)
    code, out, err = run("--mode", "status", "--ship-id", ships[-1])
    assert code == 0, err
    assert ships[-1] in out and ships[0] not in out

    for ship in ships:
        with engine.connect() as conn:  # the rows this test gave the hostile (unknown) value_format
            bad = conn.execute(text(f"SELECT count(*) FROM {source.sql} WHERE ship_id = :s AND value_format = :f"),
                               {"s": ship, "f": hostile_format}).scalar_one()
        diff = compare(engine, settings, ship)
        assert bad > 0 and diff.exact_with_rejects(bad), (ship, diff)
    with engine.connect() as conn:
        columns = set(conn.execute(text(f"SELECT channel_id FROM {qualified(tgt, 'migrator_columns')}")).scalars())
    assert columns == {c for c, _ in channels + new_channel}

    # the rejected rows (the hostile value_format) are in files under STATE_DIR/rejects, and nowhere else
    reject_dir = settings.reject_dir.resolve()
    csvs = [p.resolve() for p in tmp_path.rglob("*.csv")]
    assert csvs and all(p.parent.parent == reject_dir for p in csvs), csvs
    assert hostile_format in "".join(p.read_text(encoding="utf-8") for p in csvs)
    assert not (tmp_path / tag).exists()

    code, out, err = run("--mode", "migration-only", "--cutoff-time", f"2024-10-01'; DROP TABLE {src}.canary; --")
    assert "--cutoff-time" in _one_line_error(code, out, err, 2)
    _assert_nothing_executed(engine, src, tgt, pwned, rows)


def test_hostile_settings_are_refused_with_one_line_and_never_executed(engine: Engine, schemas: tuple[str, str],
                                                                      run: RunCli) -> None:
    """TARGET_SCHEMA, SOURCE_TABLE, SOURCE_TIMEZONE and CHUNK_HOURS holding quotes, semicolons, SQL or a
    newline are each refused before any connection: exit 2, one ``error:`` line naming the variable, nothing
    on stdout; the canary table, both schemas and the source are untouched and no payload table exists."""
    src, tgt = schemas
    pwned = f"pwned_{_tag()}"
    _create_canary(engine, src)
    seed_demo(engine, SourceTable(src, "tbl_data_timeseries"),
              DemoSpec(ships=1, channels=3, days=0.02, end=datetime(2024, 10, 2)))
    rows = _source_rows(engine, src)
    cases = [
        ("TARGET_SCHEMA", f'{tgt}"; DROP TABLE {src}.canary; --'),
        ("TARGET_SCHEMA", f"{tgt}; CREATE TABLE {pwned}_a ()"),
        ("TARGET_SCHEMA", f"{tgt}'); DROP SCHEMA {src} CASCADE; --"),
        ("TARGET_SCHEMA", f"{tgt}\n; CREATE TABLE {pwned}_b ();\n--"),
        ("SOURCE_TABLE", f"{src}.tbl_data_timeseries; DROP TABLE {src}.canary; --"),
        ("SOURCE_TABLE", f'{src}".canary; CREATE TABLE {pwned}_c (); --'),
        ("SOURCE_TABLE", f"{src}.tbl_data_timeseries WHERE 1=1; CREATE TABLE {pwned}_d ()"),
        ("SOURCE_TABLE", f"{src}.tbl_data_timeseries\r\nCREATE TABLE {pwned}_e ()"),
        ("SOURCE_TIMEZONE", f"UTC'; CREATE TABLE {pwned}_f (); --"),
        ("CHUNK_HOURS", f"1; CREATE TABLE {pwned}_g ()"),
    ]
    for name, value in cases:
        for mode in ("schema-only", "status"):
            line = _one_line_error(*run("--mode", mode, **{name: value}), expected_code=2)
            assert name in line and "invalid settings" in line, (name, value, line)
    _assert_nothing_executed(engine, src, tgt, pwned, rows)


def test_unusual_but_valid_names_in_settings_are_used_literally(engine: Engine, settings: Settings,
                                                                schemas: tuple[str, str], run: RunCli) -> None:
    """A mixed-case SOURCE_TABLE and TARGET_SCHEMA with '$' (valid identifiers) are used as exact, quoted
    names: the wide tables land in exactly that schema (not its lower-case twin), the source is read from
    exactly that table, and the oracle finds every cell. A TARGET_SHIP_IDS full of SQL is a ship id like any
    other: validate says that ship has no wide tables (exit 1, one line), and nothing is executed."""
    src, tgt = schemas
    pwned = f"pwned_{_tag()}"
    target = f"Tgt_{_tag()}$Mixed"
    _create_canary(engine, src)
    source = SourceTable(src, "Tbl$Mixed")
    seed = seed_demo(engine, source, DemoSpec(ships=1, channels=5, days=0.05, end=datetime(2024, 10, 2)))
    env = {"SOURCE_TABLE": f"{src}.Tbl$Mixed", "TARGET_SCHEMA": target}
    try:
        for args in (("schema-only",), ("tables-only",), ("migration-only", "--cutoff-time", "2024-10-02")):
            code, out, err = run("--mode", *args, **env)
            assert code == 0, (args, out, err)
        with engine.connect() as conn:
            found = set(conn.execute(text("SELECT nspname FROM pg_namespace WHERE lower(nspname) = lower(:n)"),
                                     {"n": target}).scalars())
        assert found == {target}
        literal = settings.with_overrides(source_table="Tbl$Mixed", target_schema=target)
        diff = compare(engine, literal, seed.ship_ids[0])
        assert diff.exact and diff.expected == seed.rows, diff

        ship = f"nope'); DROP TABLE {src}.canary; CREATE TABLE {pwned} (); --"
        line = _one_line_error(*run("--mode", "validate", **env, TARGET_SHIP_IDS=ship), expected_code=1)
        assert ship in line and "no wide tables" in line
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {qi(target)} CASCADE"))
    _assert_nothing_executed(engine, src, tgt, pwned)


# ----------------------------------------------------------------------------------------------
# 2. passwords never appear


def test_password_never_appears_in_output_logs_errors_or_state_files(
        engine: Engine, settings: Settings, schemas: tuple[str, str], procs: Procs, make_role: MakeRole, pg_url: str,
        tmp_path: Path) -> None:
    """With a distinctive password in DATABASE_URL (and TARGET_DATABASE_URL, and DB_PASSWORD), every mode
    that works (schema-only, tables-only, migration-only, realtime --once, hybrid, status, validate, all with
    -v) and every failure (wrong port with --debug, missing database, missing source table, an unknown
    connection option, an unreachable target, invalid URLs, a raw '@' in the password, the password as a
    ``?password=`` parameter) runs; neither the password nor its URL-encoded forms appear in stdout, stderr
    or any file under STATE_DIR. The runs did their work (oracle exact,
    state files written) and the error lines show the redacted URL, so a leak would be seen."""
    src, tgt = schemas
    token = uuid.uuid4().hex
    password = f"Pw-{token}/@:%#? &+=x"
    seed = seed_demo(engine, SourceTable(src, "tbl_data_timeseries"),
                     DemoSpec(ships=1, channels=5, days=0.05, end=None))
    role = make_role(lambda r: working_grants(engine, src, tgt, r), password=password)
    url = _role_url(pg_url, role, password)
    encoded = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert token in encoded and encoded != password  # the URL carries the encoded form
    env = {"DATABASE_URL": url}

    outputs: list[str] = []
    for args in (("schema-only",), ("tables-only",), ("migration-only",), ("realtime", "--once"),
                 ("hybrid", "--run-for", "2")):
        code, out, err = procs.run("--mode", *args, "-v", **env)
        assert code == 0, (args, out, err)
        outputs += [out, err]
    readers = [procs.start("--mode", mode, "-v", **env) for mode in ("status", "validate")]
    for proc in readers:
        code, out, err = procs.finish(proc)
        assert code == 0, (out, err)
        outputs += [out, err]
    assert f"{seed.ship_ids[0]}: COMPLETED" in outputs[-4] and "Validation passed." in outputs[-2]
    diff = compare(engine, settings, seed.ship_ids[0])
    assert diff.exact and diff.expected == seed.rows, diff

    base = make_url(url)
    wrong_port = base.set(host="127.0.0.1", port=1).difference_update_query(["host"])
    failing = [
        (("status", "--debug", "-v"), {"DATABASE_URL": wrong_port.render_as_string(hide_password=False)}),
        (("schema-only", "--debug", "-v"),
         {"DATABASE_URL": base.set(database=f"nodb_{token[:8]}").render_as_string(hide_password=False)}),
        (("schema-only", "--debug", "-v"), {**env, "SOURCE_TABLE": f"{src}.missing_{token[:8]}"}),
        (("status", "--debug", "-v"),
         {"DATABASE_URL": base.update_query_dict({"no_such_option": "1"}).render_as_string(hide_password=False)}),
        (("validate", "--debug", "-v"),
         {**env, "TARGET_DATABASE_URL": wrong_port.render_as_string(hide_password=False)}),
        (("status", "--debug", "-v"),
         {"DATABASE_URL": "", "DB_HOST": "127.0.0.1", "DB_PORT": "1", "DB_NAME": "nodb", "DB_USER": role,
          "DB_PASSWORD": password}),
        (("status", "--debug"), {"DATABASE_URL": f"postgresql://{role}:{encoded}@127.0.0.1:notaport/db"}),
        (("status", "--debug"), {"DATABASE_URL": f"mysql://{role}:{encoded}@127.0.0.1/db"}),
        (("status", "--debug"), {"DATABASE_URL": f"postgresql://{role}:{password}@127.0.0.1:1/db"}),
        (("status", "--debug"), {"DATABASE_URL": f"postgresql://{role}:Pw@{token}@127.0.0.1:1/db"}),  # raw '@'
        (("status", "--debug", "-v"), {"DATABASE_URL": f"postgresql://{role}@127.0.0.1:1/db?password={encoded}"}),
    ]
    started = [procs.start("--mode", *args, **extra) for args, extra in failing]
    errors = []
    for proc, (args, _) in zip(started, failing, strict=True):
        code, out, err = procs.finish(proc)
        assert code in (1, 2), (args, out, err)
        assert err.strip(), args
        outputs += [out, err]
        errors.append(err)
    joined = "\n".join(errors)
    assert "Traceback" in joined  # --debug printed tracebacks
    assert "cannot connect" in joined and f"{role}:***@" in joined  # the redacted URL is shown ...
    assert "password=***" in joined and "%40" in joined
    assert f"missing_{token[:8]}" in joined and f"nodb_{token[:8]}" in joined

    state = settings.state_dir
    for name in ("schema.json", "cutoffs.json", "migrator.log", "progress.json"):
        assert (state / name).is_file(), name
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # STATE_DIR and the runs' stdout/stderr files
    forms = {password, encoded, token}
    for text_out in outputs:
        for form in forms:
            assert form not in text_out, (form, text_out[-2000:])
    for path in files:
        content = path.read_bytes().decode("utf-8", errors="replace")
        for form in forms:
            assert form not in content, (path, form)  # ... but never the password, in any form


@pytest.mark.parametrize("template,refused", [
    ("postgresql://{u}:{pw}@db.example:5432/telemetry", False),
    ("postgresql://{u}:{pw}@/telemetry?host=/run/postgresql", False),
    ("postgresql://{u}@db.example/telemetry?sslmode=require&password={pw}", False),
    ("postgresql://{u}:Pw@{token}@db.example/telemetry", True),  # a raw '@': the rest looks like the host
])
def test_settings_and_shown_urls_never_hold_the_password(template: str, refused: bool) -> None:
    """The settings' repr (as a log line or a report would show it) and the URL the tool prints hold neither
    the password nor its encoded form, for a password in the URL, with a socket host, as a query parameter,
    and with a raw '@' (which is refused with one message that does not repeat it)."""
    from urllib.parse import quote

    from config import load_settings, redact_url
    from narrow2wide.common.errors import ConfigError

    token = uuid.uuid4().hex
    url = template.format(u="mig", pw=quote(f"Pw-{token}/@:%#? &+=x", safe=""), token=token)
    env = {"DATABASE_URL": url, "TARGET_DATABASE_URL": url}
    if refused:
        with pytest.raises(ConfigError, match="%40") as caught:
            load_settings(env, env_file=None)
        shown = [str(caught.value), redact_url(url)]
    else:
        settings = load_settings(env, env_file=None)
        assert settings.database_url is not None and token in settings.database_url  # the real URL keeps it
        shown = [repr(settings), str(settings), redact_url(settings.database_url), redact_url(url)]
        assert "mig" in shown[0] and "mig" in shown[2] and "telemetry" in shown[2]  # only the secret is hidden
    for text_out in shown:
        assert token not in text_out, text_out


# ----------------------------------------------------------------------------------------------
# 3. least privilege


@pytest.mark.parametrize("grants", ["readme", "readme+create-on-database"])
def test_least_privilege_role_runs_every_step_and_the_result_is_exact(
        grants: str, engine: Engine, settings: Settings, schemas: tuple[str, str], run: RunCli, make_role: MakeRole,
        pg_url: str) -> None:
    """A login role that is not superuser, does not own the source and has only the README's GRANTs
    (``readme``: USAGE on the source schema, SELECT on the source table, USAGE and CREATE on the target
    schema), or those plus CREATE on the database (``readme+create-on-database``, see :func:`working_grants`),
    runs schema-only, tables-only, migration-only, realtime --once (which adds a column for a channel that
    appeared after tables-only), status and validate through the CLI; it owns the tables it created and the
    oracle (as superuser) finds every cell. The target schema exists, so the README's GRANTs must be enough."""
    src, tgt = schemas
    seed = seed_demo(engine, SourceTable(src, "tbl_data_timeseries"), DemoSpec(ships=1, channels=6, days=0.05,
                                                                               end=None))
    if grants == "readme":
        role = make_role(lambda r: readme_grants(src, tgt, r))
    else:
        role = make_role(lambda r: working_grants(engine, src, tgt, r))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar_one() is False
        owner = conn.execute(text("SELECT tableowner FROM pg_tables WHERE schemaname = :s AND tablename = :t"),
                             {"s": src, "t": "tbl_data_timeseries"}).scalar_one()
    assert owner != role
    env = {"DATABASE_URL": _role_url(pg_url, role)}
    cutoff = seed.end - timedelta(minutes=20)

    for args in (("schema-only",), ("tables-only",)):
        code, out, err = run("--mode", *args, **env)
        assert code == 0, (args, out, err)
    ship = seed.ship_ids[0]
    new_channel = [("late/new/channel", "Decimal")]
    added = _insert_rows(engine, SourceTable(src, "tbl_data_timeseries"), [ship], new_channel,
                         seed.end - timedelta(minutes=15), seed.end, ["-"])
    assert added == 15
    for args in (("migration-only", "--cutoff-time", str(cutoff)), ("realtime", "--once"), ("status",),
                 ("validate",)):
        code, out, err = run("--mode", *args, **env)
        assert code == 0, (args, out, err)
        if args[0] == "validate":
            assert "Validation passed." in out
        if args[0] == "status":
            assert f"{ship}: COMPLETED" in out

    diff = compare(engine, settings, ship)
    assert diff.exact and diff.expected == seed.rows + added, diff
    with engine.connect() as conn:
        owners = dict(conn.execute(text("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = :s"),
                                   {"s": tgt}).all())
        channels = set(conn.execute(text(f"SELECT channel_id FROM {qualified(tgt, 'migrator_columns')}")).scalars())
    assert "late/new/channel" in channels
    assert owners and set(owners.values()) == {role}, owners


# ----------------------------------------------------------------------------------------------
# 4. --drop-tables drops only the tool's tables


def _oid(conn: Connection, schema: str, name: str) -> int | None:
    return conn.execute(text("SELECT CAST(to_regclass(:t) AS oid)"), {"t": qualified_raw(schema, name)}).scalar()


def test_drop_tables_drops_only_the_tables_the_tool_created(engine: Engine, schemas: tuple[str, str], run: RunCli,
                                                            prepared: Callable[..., SeedResult]) -> None:
    """``tables-only --drop-tables`` drops and recreates only the tables recorded in migrator_tables for the
    ships asked: a user's tables and view in the target schema, including ones named like the tool's wide
    tables (a second part of a migrated ship, a ship that is not migrated), keep their identity (oid) and
    rows; with --ship-id the other ship's wide table is kept as well."""
    src, tgt = schemas
    seed = prepared(ships=2, channels=6)
    first, second = seed.ship_ids
    ours = {ship: f"tbl_data_timeseries_{ship.lower()}" for ship in seed.ship_ids}
    users = [f"{ours[first]}_2", "tbl_data_timeseries_imo1234567", "user_notes"]
    view = f"{ours[second]}_v"
    with engine.begin() as conn:
        for name in users:
            conn.execute(text(f"CREATE TABLE {qualified(tgt, name)} (created_time timestamp, note text)"))
            conn.execute(text(f"INSERT INTO {qualified(tgt, name)} VALUES ('2024-10-01', 'mine')"))
        conn.execute(text(f"CREATE VIEW {qualified(tgt, view)} AS SELECT * FROM {qualified(tgt, 'user_notes')}"))
        for table in ours.values():
            conn.execute(text(f"INSERT INTO {qualified(tgt, table)} (created_time) VALUES ('2024-10-01')"))
        before = {name: _oid(conn, tgt, name) for name in [*users, view, *ours.values()]}
    assert all(before.values()), before

    def check(dropped: set[str]) -> None:
        with engine.connect() as conn:
            for name in [*users, view, *ours.values()]:
                oid = _oid(conn, tgt, name)
                assert oid is not None, name
                assert (oid != before[name]) == (name in dropped), name
                before[name] = oid
            for name in [*users, view]:
                assert conn.execute(text(f"SELECT note FROM {qualified(tgt, name)}")).scalars().all() == ["mine"]
            for name in ours.values():
                n = conn.execute(text(f"SELECT count(*) FROM {qualified(tgt, name)}")).scalar_one()
                assert n == (0 if name in dropped else 1), name
            tracked = set(conn.execute(text(f"SELECT table_name FROM {qualified(tgt, 'migrator_tables')}")).scalars())
        assert tracked == set(ours.values())

    code, out, err = run("--mode", "tables-only", "--drop-tables", "--yes", "--ship-id", first)
    assert code == 0, (out, err)
    assert f"{first}: dropped 1" in out and second not in out
    check({ours[first]})

    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {qualified(tgt, ours[first])} (created_time) VALUES ('2024-10-01')"))
    code, out, err = run("--mode", "tables-only", "--drop-tables", "--yes")
    assert code == 0, (out, err)
    assert f"{first}: dropped 1" in out and f"{second}: dropped 1" in out
    check({ours[first], ours[second]})


def test_drop_tables_never_cascades_into_a_users_view(engine: Engine, schemas: tuple[str, str], run: RunCli,
                                                      prepared: Callable[..., SeedResult]) -> None:
    """A user's view on one of the tool's wide tables makes ``tables-only --drop-tables`` stop instead of
    dropping the view with it: exit 1 with one ``error:`` line saying the table has dependent objects (and
    not suggesting CASCADE); the view, the wide table (same oid) and its rows are all still there."""
    src, tgt = schemas
    seed = prepared(ships=1, channels=4)
    table = f"tbl_data_timeseries_{seed.ship_ids[0].lower()}"
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {qualified(tgt, table)} (created_time) VALUES ('2024-10-01')"))
        conn.execute(text(f"CREATE VIEW {qualified(tgt, 'user_view_on_ours')} AS "
                          f"SELECT created_time FROM {qualified(tgt, table)}"))
        oid = _oid(conn, tgt, table)

    code, out, err = run("--mode", "tables-only", "--drop-tables", "--yes")
    with engine.connect() as conn:
        assert _oid(conn, tgt, "user_view_on_ours") is not None
        assert _oid(conn, tgt, table) == oid
        assert conn.execute(text(f"SELECT count(*) FROM {qualified(tgt, table)}")).scalar_one() == 1
    line = _one_line_error(code, out, err, 1)
    message = line.split("log:")[0]  # the log file's path holds this test's name
    assert table in message and "depend" in message and "CASCADE" not in message.upper(), line
