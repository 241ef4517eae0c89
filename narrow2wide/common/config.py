"""Settings: one frozen object built from the environment and an optional ``.env`` file.

Nothing here runs at import time; call :func:`load_settings`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from narrow2wide.common.errors import ConfigError

_IDENT = r"[A-Za-z_][A-Za-z0-9_$]*"
_TABLE_RE = re.compile(rf"^(?:({_IDENT})\.)?({_IDENT})$")

DEFAULTS: dict[str, str] = {
    "SOURCE_TABLE": "tenant.tbl_data_timeseries",
    "TARGET_SCHEMA": "tenant",
    "TARGET_SHIP_IDS": "",
    "CHUNK_HOURS": "24",
    "STATE_DIR": "./state",
    "EMBEDDED_PGDATA": "",  # empty: STATE_DIR/pgdata
    "SOURCE_TIMEZONE": "UTC",
    "REALTIME_LOOKBACK_MINUTES": "10",
    "METRICS_PORT": "",  # empty: no metrics endpoint (--metrics-port turns it on)
    "METRICS_HOST": "127.0.0.1",
}


@dataclass(frozen=True)
class Settings:
    """Everything the tool needs to know about where data lives and how to move it."""

    database_url: str | None
    target_database_url: str | None
    source_schema: str = "tenant"
    source_table: str = "tbl_data_timeseries"
    target_schema: str = "tenant"
    ship_ids: tuple[str, ...] = ()
    chunk_hours: int = 24
    state_dir: Path = field(default_factory=lambda: Path("state"))
    embedded_pgdata: Path = field(default_factory=lambda: Path("state/pgdata"))
    source_timezone: str = "UTC"
    realtime_lookback_minutes: int = 10
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    @property
    def uses_embedded(self) -> bool:
        """True when no database is configured and the embedded server is used."""
        return self.database_url is None

    @property
    def schema_file(self) -> Path:
        """Where ``--mode schema-only`` writes its analysis."""
        return self.state_dir / "schema.json"

    @property
    def cutoff_file(self) -> Path:
        """Where the cutoff store keeps cutoffs and watermarks."""
        return self.state_dir / "cutoffs.json"

    @property
    def log_file(self) -> Path:
        """The tool's log file."""
        return self.state_dir / "migrator.log"

    @property
    def reject_dir(self) -> Path:
        """Folder of reject files (values that did not fit their column)."""
        return self.state_dir / "rejects"

    def __repr__(self) -> str:
        """Like the dataclass repr, with the passwords of both URLs hidden (a repr may reach a log or a report)."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown_value = repr(redact_url(value)) if f.name.endswith("_url") and value is not None else repr(value)
            parts.append(f"{f.name}={shown_value}")
        return f"Settings({', '.join(parts)})"

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (command-line options win over the environment)."""
        return replace(self, **changes)


def shown(value: str, limit: int = 120) -> str:
    """``value`` for a one-line message: control characters (a newline in a hostile setting) escaped, long ones cut."""
    text = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", value)
    return text if len(text) <= limit else text[:limit] + "..."


_SECRET_QUERY_KEYS = ("password", "sslpassword")  # libpq takes a password in the query string too


def redact_url(url: str | None) -> str:
    """Render a database URL with its password hidden; safe for output and logs.

    Hidden: the password, ``password=``/``sslpassword=`` query parameters, and whatever a raw '@' in the
    password pushed into the host part.
    """
    if url is None:
        return "(embedded PostgreSQL)"
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        if parsed.host and "@" in parsed.host:  # a raw '@' in the password: its rest went into the host
            parsed = parsed.set(password="***", host=parsed.host.rsplit("@", 1)[1])
        secret = [k for k in parsed.query if k.lower() in _SECRET_QUERY_KEYS]
        rendered = parsed.difference_update_query(secret).render_as_string(hide_password=True)
        if secret:
            rendered += ("&" if "?" in rendered else "?") + "&".join(f"{k}=***" for k in secret)
        return rendered
    except Exception:  # noqa: BLE001 - an unparsable URL must still never leak
        text = re.sub(r"(://[^:/@]*:).*@", r"\1***@", url)
        return re.sub(r"(?i)\b((?:ssl)?password=)[^&\s]*", r"\1***", text)


def _normalise_url(name: str, url: str, problems: list[str]) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - any parse failure is a usage error
        problems.append(f"{name} is not a valid database URL (expected postgresql://user:password@host:port/dbname)")
        return None
    if parsed.host and "@" in parsed.host:  # said without the URL: the host part now holds password text
        problems.append(f"{name} has a raw '@' in its user name or password; write it as %40")
        return None
    backend = parsed.drivername.split("+")[0]
    if backend not in ("postgresql", "postgres"):
        problems.append(f"{name} must point at PostgreSQL, got '{parsed.drivername}'")
        return None
    return psycopg2_url(url)


def psycopg2_url(url: str) -> str:
    """``url`` (a PostgreSQL URL) naming psycopg2 as its driver: the tool reads and writes with its COPY.

    A bare ``postgresql://`` would otherwise take SQLAlchemy's default driver (psycopg 3 from 2.1 on).
    """
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def _positive_int(name: str, raw: str, problems: list[str], minimum: int = 1) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        problems.append(f"{name} must be a whole number, got '{shown(raw)}'")
        return minimum
    if value < minimum:
        problems.append(f"{name} must be at least {minimum}, got {value}")
    return value


def _read_env(environ: Mapping[str, str] | None, env_file: str | Path | None) -> Callable[[str], str]:
    """A lookup of a variable: the environment, else ``env_file``, else :data:`DEFAULTS` (stripped)."""
    env: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    env.update(os.environ if environ is None else environ)

    def get(name: str) -> str:
        return env.get(name, DEFAULTS.get(name, "")).strip()

    return get


def _source_url(get: Callable[[str], str], problems: list[str]) -> str | None:
    """The source database URL from DATABASE_URL, or from DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD."""
    if get("DATABASE_URL"):
        return _normalise_url("DATABASE_URL", get("DATABASE_URL"), problems)
    if not any(get(n) for n in ("DB_HOST", "DB_NAME", "DB_USER")):
        return None
    missing = [n for n in ("DB_HOST", "DB_NAME", "DB_USER") if not get(n)]
    if missing:
        problems.append("DB_HOST, DB_NAME and DB_USER go together; missing " + ", ".join(missing))
    port = get("DB_PORT") or "5432"
    _positive_int("DB_PORT", port, problems)
    if missing:
        return None
    from sqlalchemy.engine import URL

    return URL.create(
        "postgresql+psycopg2",
        username=get("DB_USER"),
        password=get("DB_PASSWORD") or None,
        host=get("DB_HOST"),
        port=int(port) if port.isdigit() else None,
        database=get("DB_NAME"),
    ).render_as_string(hide_password=False)


def _target_url(get: Callable[[str], str], database_url: str | None, problems: list[str]) -> str | None:
    """TARGET_DATABASE_URL, which needs a source URL as well."""
    if not get("TARGET_DATABASE_URL"):
        return None
    target_url = _normalise_url("TARGET_DATABASE_URL", get("TARGET_DATABASE_URL"), problems)
    if database_url is None and not problems:
        problems.append("TARGET_DATABASE_URL needs DATABASE_URL (or DB_HOST...) for the source as well")
    return target_url


def _names(get: Callable[[str], str], problems: list[str]) -> tuple[str, str, str]:
    """(source schema, source table, target schema) from SOURCE_TABLE and TARGET_SCHEMA."""
    source_schema, source_table = "tenant", "tbl_data_timeseries"
    match = _TABLE_RE.match(get("SOURCE_TABLE"))
    if match is None:
        problems.append(f"SOURCE_TABLE must be a table name like schema.table, got '{shown(get('SOURCE_TABLE'))}'")
    else:
        source_schema, source_table = match.group(1) or "public", match.group(2)
    target_schema = get("TARGET_SCHEMA")
    if not re.fullmatch(_IDENT, target_schema):
        problems.append(f"TARGET_SCHEMA must be a schema name (letters, digits, _), got '{shown(target_schema)}'")
    return source_schema, source_table, target_schema


def _timezone(get: Callable[[str], str], problems: list[str]) -> str:
    """SOURCE_TIMEZONE, checked to be a zone this Python knows."""
    timezone = get("SOURCE_TIMEZONE")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(timezone)
    except Exception:  # noqa: BLE001 - any lookup failure means the name is unusable
        problems.append(f"SOURCE_TIMEZONE must be an IANA zone name like UTC or Europe/Oslo, got '{shown(timezone)}'")
    return timezone


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    """Build :class:`Settings` from ``environ`` (default: the process environment) and ``env_file``.

    Values in the environment win over the file. Every invalid or missing variable is
    reported at once in one :class:`ConfigError`.
    """
    get = _read_env(environ, env_file)
    problems: list[str] = []
    database_url = _source_url(get, problems)
    target_url = _target_url(get, database_url, problems)
    source_schema, source_table, target_schema = _names(get, problems)
    ship_ids = tuple(s.strip() for s in get("TARGET_SHIP_IDS").split(",") if s.strip())
    chunk_hours = _positive_int("CHUNK_HOURS", get("CHUNK_HOURS"), problems)
    lookback = _positive_int("REALTIME_LOOKBACK_MINUTES", get("REALTIME_LOOKBACK_MINUTES"), problems, minimum=0)
    timezone = _timezone(get, problems)
    metrics_port = _positive_int("METRICS_PORT", get("METRICS_PORT"), problems) if get("METRICS_PORT") else None
    if metrics_port is not None and metrics_port > 65535:
        problems.append(f"METRICS_PORT must be a TCP port (1 to 65535), got {metrics_port}")
    state_dir = Path(get("STATE_DIR") or "./state")
    pgdata = Path(get("EMBEDDED_PGDATA")) if get("EMBEDDED_PGDATA") else state_dir / "pgdata"
    if problems:
        raise ConfigError("invalid settings: " + "; ".join(problems))
    return Settings(
        database_url=database_url,
        target_database_url=target_url,
        source_schema=source_schema,
        source_table=source_table,
        target_schema=target_schema,
        ship_ids=ship_ids,
        chunk_hours=chunk_hours,
        state_dir=state_dir,
        embedded_pgdata=pgdata,
        source_timezone=timezone,
        realtime_lookback_minutes=lookback,
        metrics_port=metrics_port,
        metrics_host=get("METRICS_HOST") or "127.0.0.1",
    )
