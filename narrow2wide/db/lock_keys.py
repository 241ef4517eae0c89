"""Every advisory-lock key the tool takes, in one place.

PostgreSQL advisory locks are keyed by a 64-bit number; the tool derives it on the server with
``hashtextextended(key, 0)`` from a readable key that names the lock's kind, the target schema
and the object. Two places that must exclude each other (realtime and ``validate --repair``
writing one ship) therefore share the function that builds the key, never a copy of its text.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection


def chunk_key(schema: str, chunk_id: int) -> str:
    """A backfill worker's claim on one ledger chunk (session lock, held while the chunk is worked on)."""
    return f"migrator-chunk:{schema}:{chunk_id}"


def realtime_key(schema: str, ship_id: str) -> str:
    """The one realtime processor of a ship (session lock, held for the processor's life)."""
    return f"migrator-realtime:{schema}:{ship_id}"


def write_key(schema: str, ship_id: str) -> str:
    """Writing a ship's wide tables outside the backfill: realtime windows and ``validate --repair``."""
    return f"migrator-write:{schema}:{ship_id}"


def ddl_key(schema: str, ship_id: str) -> str:
    """Schema changes of one ship (transaction lock: creating its tables, adding channels)."""
    return f"migrator-ddl:{schema}:{ship_id}"


def bookkeeping_key(schema: str, table: str) -> str:
    """Creating one of the tool's bookkeeping tables (transaction lock: two first runs at once do not race)."""
    return f"migrator-bookkeeping:{schema}:{table}"


def take_xact_lock(conn: Connection, key: str) -> None:
    """Take the transaction lock ``key`` (built by one of the functions above) until the transaction ends."""
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": key})


def take_write_locks(conn: Connection, schema: str, ship_ids: list[str]) -> None:
    """Take the write lock of every ship in ``ship_ids`` until ``conn``'s transaction ends (one statement).

    The keys are taken in one fixed order, so two sessions taking several never deadlock.
    """
    conn.execute(text("SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) "
                      "FROM (SELECT k FROM unnest(CAST(:k AS text[])) AS u(k) ORDER BY k) o"),
                 {"k": [write_key(schema, s) for s in ship_ids]})
