"""The one retry policy: which errors are retried, and how long to wait before the next attempt.

The tool's own errors say whether a retry can help (:class:`~narrow2wide.common.errors.RetryableError`
or :class:`~narrow2wide.common.errors.FatalError`); the driver's errors, a file system error and a
malformed value met while converting a window are retried as well. The waits grow exponentially
to a cap, the same formula for the backfill's chunks, realtime cycles, streaming rounds and reconnects.
"""

from __future__ import annotations

import psycopg2
from sqlalchemy.exc import SQLAlchemyError

from narrow2wide.common.errors import RetryableError

DATABASE_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, psycopg2.Error)
"""An error from the database or its driver: a lost connection, a failed statement."""

RETRYABLE: tuple[type[BaseException], ...] = (RetryableError, *DATABASE_ERRORS, OSError, ValueError)
"""What the long-running loops retry: the tool's retryable errors and the database's, OS and value errors."""


def is_transient(exc: BaseException) -> bool:
    """True for a database error another attempt may get past: a lost or refused connection, a
    cancelled statement, a deadlock or serialization failure (psycopg2's ``OperationalError`` family);
    False for a statement that is wrong (a missing table, a syntax error), which fails the same way again."""
    orig = getattr(exc, "orig", None) or exc
    return isinstance(orig, (psycopg2.OperationalError, psycopg2.InterfaceError)) or bool(
        getattr(exc, "connection_invalidated", False))


def backoff_delay(attempt: int, first: float, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): ``first`` doubled each time, at most ``cap``."""
    return min(first * 2.0 ** (attempt - 1), cap)
