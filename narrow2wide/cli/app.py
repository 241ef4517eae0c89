"""Command line: ``python main.py --mode MODE [options]``.

Parses options, loads settings, calls one library function per mode and prints its result.
Errors from the library become one line on stderr (exit 1; 2 for usage); ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import traceback
from pathlib import Path

import click
import psycopg2

from narrow2wide.common.config import Settings, load_settings
from narrow2wide.common.errors import ConfigError, MigratorError, NotImplementedYet, one_line
from narrow2wide.common.jsonable import to_jsonable
from narrow2wide.common.retry import DATABASE_ERRORS

log = logging.getLogger("main")

MODES: dict[str, str] = {
    "schema-only": "Step 1: analyse the source (ships, channels, types) and write the schema file.",
    "tables-only": "Step 2: create each ship's wide tables from the schema file.",
    "migration-only": "Step 3: backfill history before the cutoff, in resumable chunks.",
    "realtime": "Step 4: keep the wide tables current (long-lived, or --once from cron).",
    "concurrent": "Realtime from the cutoff and the backfill of history at the same time (recommended).",
    "hybrid": "Concurrent with parallel workers, chunk splitting and a progress file.",
    "streaming": "One cursor per ship from its first row up to the live data.",
    "status": "Show per-ship progress: chunks, rows, cutoff, watermark, rejects, pauses and holds.",
    "pause": "Pause the backfill (of --ship-id ships, else every ship) on every host; applies to the next run too.",
    "resume": "Resume a paused backfill: held workers go on with no restart.",
    "validate": "Compare the wide tables with the source per hour bucket (--repair fixes).",
    "demo": "Run the whole guide on a generated fleet with a live writer (--seed-only: only seed it).",
}


BACKFILL_MODES = ("migration-only", "concurrent", "hybrid")  # --dry-run and the throttle options
LONG_RUNNING_MODES = ("migration-only", "realtime", "concurrent", "hybrid", "streaming")  # --metrics-port
CURSOR_MODES = ("realtime", "concurrent", "hybrid")  # the modes whose realtime cycles take --cursor


def _mode_help() -> str:
    return "; ".join(f"{name}: {text}" for name, text in MODES.items())


def check_mode_options(mode: str, opts: dict) -> None:
    """Refuse options that mean nothing for ``mode`` (a usage error, exit 2)."""
    def refuse(flag: str, modes: tuple[str, ...]) -> None:
        raise click.UsageError(f"{flag} applies to --mode {', '.join(modes)} only, not to --mode {mode}")

    if mode not in BACKFILL_MODES:
        for key, flag in (("dry_run", "--dry-run"), ("max_rows_per_second", "--max-rows-per-second"),
                          ("throttle_query", "--throttle-query"), ("max_source_active", "--max-source-active")):
            if opts.get(key) not in (None, False):
                refuse(flag, BACKFILL_MODES)
    if mode not in LONG_RUNNING_MODES and opts.get("metrics_port") is not None:
        refuse("--metrics-port", LONG_RUNNING_MODES)
    if mode not in CURSOR_MODES and opts.get("cursor") not in (None, "created_time"):
        refuse("--cursor", CURSOR_MODES)


class LogFileHandler(logging.FileHandler):
    """The log file. A failed write (a full or read-only STATE_DIR) turns it off with one warning line
    on stderr, instead of logging's "--- Logging error ---" and a traceback for every record."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` unless an earlier write failed."""
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        """Give up on the file after the first error, saying so once."""
        if self.failed:
            return
        self.failed = True
        exc = sys.exc_info()[1]
        reason = getattr(exc, "strerror", None) or exc
        sys.stderr.write(f"warning: cannot write the log file {self.baseFilename}: {reason}; "
                         "diagnostics go to stderr only\n")
        try:
            self.close()
        except (OSError, ValueError):
            pass  # the unwritten buffer cannot be flushed either


def setup_logging(verbosity: int, log_file: Path | None) -> None:
    """Diagnostics to stderr (INFO by default, -v DEBUG, -q WARNING) and everything to ``log_file``."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handler = LogFileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            log.warning("cannot write the log file %s: %s", log_file, exc)
        else:
            handler.setLevel(logging.DEBUG)
            handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
            root.addHandler(handler)
    for noisy in ("sqlalchemy", "pgserver", "urllib3", "fasteners"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_mode(mode: str, settings: Settings, opts: dict) -> tuple[object, int]:
    """Call the library function of ``mode``; returns (result, exit code)."""
    # The tool never calls BLAS, but numpy's OpenBLAS starts a thread per extra core when numpy is
    # imported, and that thread spins for a while: 0.06 CPU-s of a 2-core host at every start.
    # Set here, before the modes import numpy; a user's own setting wins. Worker processes inherit it.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from narrow2wide.cli import modes

    # The modules' objects live as long as the process: keep them out of every garbage collection
    # of the run (each full one walks all of them) and of the collections at exit.
    gc.freeze()
    handler = modes.HANDLERS.get(mode)
    if handler is None:
        raise NotImplementedYet(f"--mode {mode} is not implemented yet")
    return handler(settings, opts)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--mode", "mode", required=True, type=click.Choice(list(MODES)), help=_mode_help())
@click.option("--ship-id", "ship_ids", multiple=True, help="Work on this ship only (repeatable).")
@click.option("--cutoff-time", help='Backfill history before this time, e.g. "2024-10-02 17:00:00".')
@click.option("--chunk-hours", type=click.IntRange(min=1), help="Hours per backfill chunk (default CHUNK_HOURS).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Backfill processes.")
@click.option("--retry-failed", is_flag=True, help="migration-only: run only the chunks marked failed.")
@click.option("--force", is_flag=True, help="Accept a --cutoff-time that differs from the stored one.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Minutes between realtime cycles (fractions allowed).")
@click.option("--once", is_flag=True, help="realtime: run one cycle and exit (for cron).")
@click.option("--cursor", type=click.Choice(["created_time", "server_created_time"]), default="created_time",
              show_default=True, help="realtime: find new rows by created_time (with a lookback) or by insert time.")
@click.option("--wait-lock", is_flag=True,
              help="realtime: wait for a ship held by another processor instead of exiting.")
@click.option("--run-for", type=click.FloatRange(min=0), help="Finish the current step and exit after SECONDS.")
@click.option("--sample-hours", type=click.FloatRange(min=0.01),
              help="schema-only: take formats and counts from the newest HOURS of each ship only.")
@click.option("--column-style", type=click.Choice(["id", "snake"]), default="id", show_default=True,
              help="Column names: the channel id itself, or snake_case.")
@click.option("--routing-file", type=click.Path(dir_okay=False, path_type=Path),
              help="schema-only: a 'part,channel_id' CSV assigning channels to table parts.")
@click.option("--drop-tables", is_flag=True, help="tables-only: drop and recreate the tables this tool created.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--repair", is_flag=True, help="validate: re-migrate buckets that differ, then check again.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (status: fields listed in README).")
@click.option("--dry-run", is_flag=True,
              help="migration-only, concurrent, hybrid: print the plan per ship with an ETA; write nothing.")
@click.option("--max-rows-per-second", type=click.FloatRange(min=0, min_open=True),
              help="Backfill: at most this many narrow rows per second over all workers of the run.")
@click.option("--throttle-query", metavar="SQL",
              help="Backfill: hold while this read-only query on the source returns true (checked every 2 s).")
@click.option("--max-source-active", type=click.IntRange(min=0), metavar="N",
              help="Backfill: hold while the source has more than N active sessions (not counting this tool's).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Serve Prometheus /metrics and /healthz on PORT (default METRICS_PORT; host METRICS_HOST).")
@click.option("--ships", type=click.IntRange(min=1), default=2, show_default=True, help="demo: ships to generate.")
@click.option("--channels", type=click.IntRange(min=1), default=100, show_default=True,
              help="demo: channels per ship.")
@click.option("--days", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="demo: days of history.")
@click.option("--seed-only", is_flag=True, help="demo: only seed the source, run nothing else.")
@click.option("-v", "--verbose", count=True, help="More diagnostics on stderr.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(mode: str, verbose: int, quiet: bool, debug: bool, **opts: object) -> None:
    """Migrate ship telemetry from the narrow table into per-ship wide tables.

    Settings come from the environment or a .env file (see README). With no database
    configured, an embedded PostgreSQL under STATE_DIR is started.
    """
    check_mode_options(mode, opts)
    try:
        settings = settings_for(opts)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    quiet_cycle = mode == "realtime" and bool(opts["once"]) and verbose == 0
    log_file = None if opts["dry_run"] else settings.log_file  # a dry run writes nothing, not even the log file
    setup_logging(-1 if (quiet or quiet_cycle) else verbose, log_file)
    try:
        result, code = run_mode(mode, settings, opts)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Abort:  # the user answered no to a confirmation: nothing was done
        click.echo("aborted: nothing was changed", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - every error ends here as one line; the traceback in the log
        log.debug("error", exc_info=True)
        if debug:
            traceback.print_exc()
        line, exit_code = failure_line(exc, log_file)
        click.echo(f"error: {line}", err=True)
        sys.exit(exit_code)
    if quiet_cycle and code == 0:
        result = None  # cron mails whatever is printed: a good --once cycle prints nothing
    if result is not None:
        print_result("dry-run" if opts["dry_run"] else mode, result, bool(opts["as_json"]))
    gc.freeze()  # what the run left is freed as the process ends, without the collections' walks (0.1 to 0.2 s)
    sys.exit(code)


def settings_for(opts: dict[str, object]) -> Settings:
    """The settings (environment, ``.env``) with the command line's ``--ship-id`` and ``--chunk-hours``."""
    overrides: dict[str, object] = {}
    if opts["ship_ids"]:
        overrides["ship_ids"] = tuple(opts["ship_ids"])  # type: ignore[arg-type]
    if opts["chunk_hours"]:
        overrides["chunk_hours"] = opts["chunk_hours"]
    return load_settings().with_overrides(**overrides)


def failure_line(exc: Exception, log_file: Path | None) -> tuple[str, int]:
    """What a failed mode prints (one line) and its exit code: the tool's own errors say what to do;
    a database error or an unexpected one says where to look (``log_file``: None when none is written)."""
    if isinstance(exc, MigratorError):
        return one_line(exc), exc.exit_code
    log_hint = f"; log: {log_file}" if log_file is not None else ""
    if isinstance(exc, DATABASE_ERRORS):  # a connection lost mid-run, or an unexpected SQL error
        orig = getattr(exc, "orig", None) or exc
        what = ("lost the connection to the database" if isinstance(orig, psycopg2.OperationalError)
                else "database error")
        return (f"{what}: {type(orig).__name__}: {one_line(exc)}; check the database and re-run "
                f"(every step resumes; --debug shows the traceback{log_hint})"), 1
    return f"{type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback{log_hint})", 1


def print_result(mode: str, result: object, as_json: bool) -> None:
    """A mode's result on stdout: JSON, or the report's text."""
    if as_json:
        click.echo(json.dumps(to_jsonable(result), indent=2, ensure_ascii=False))
        return
    from narrow2wide.cli import report

    text_out = report.render(mode, result)
    if text_out:
        click.echo(text_out)


if __name__ == "__main__":
    cli()
