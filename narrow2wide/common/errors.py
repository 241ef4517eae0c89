"""The tool's exception hierarchy, and the one way an error becomes one line of text.

Library code raises these; only the CLI turns them into one-line messages
and exit codes (2 for usage and configuration, 1 for everything at run time).
"""

from __future__ import annotations


class MigratorError(Exception):
    """Base of every error this tool raises on purpose. Exit code 1."""

    exit_code = 1


class RetryableError(MigratorError):
    """A run-time failure another attempt may get past (the backfill and realtime loops retry it)."""


class FatalError(MigratorError):
    """A failure no retry mends (settings, a missing step, a conflicting request): the run stops and says why."""


class ConfigError(FatalError):
    """Invalid or missing settings; the message names every bad variable. Exit code 2."""

    exit_code = 2


class DatabaseUnavailable(RetryableError):
    """The database cannot be reached or refused the connection."""


class SourceError(RetryableError):
    """The source table is missing, malformed or holds no rows for a ship."""


class SchemaFileMissing(FatalError):
    """``--mode tables-only`` (or a later step) found no schema file."""


class SchemaError(RetryableError):
    """The wide tables or their metadata do not match what a step needs."""


class CutoffConflict(FatalError):
    """A cutoff given on the command line differs from the stored one."""


class StateError(RetryableError):
    """A state file (cutoff store, schema file) is unreadable or unwritable."""


class ChunkFailures(FatalError):
    """A backfill ended with one or more chunks marked failed."""


class LockHeld(RetryableError):
    """Another process holds the lock of a ship."""


class NotImplementedYet(FatalError):
    """A mode that exists on the command line but is not built yet. Exit code 2."""

    exit_code = 2


def _source(exc: BaseException) -> BaseException:
    """The error to describe: the driver's error that a database error wraps, else ``exc`` itself."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def one_line(exc: BaseException) -> str:
    """An exception as one line: its first line, or for a database error the driver's first line.

    An error without a message is named by its type.
    """
    source = _source(exc)
    lines = [line.strip() for line in str(source).splitlines() if line.strip()]
    return lines[0] if lines else type(source).__name__


def error_line(exc: BaseException) -> str:
    """``exc`` as ``Type: first line`` (the driver's error for a database error), for logs, ledgers and results."""
    source = _source(exc)
    return f"{type(source).__name__}: {one_line(exc) if str(source).strip() else ''}"
