"""What the tool's small bookkeeping tables in the target schema share: a name, creation, a check."""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import text
from sqlalchemy.engine import Connection

from narrow2wide.db.database import qualified
from narrow2wide.db.lock_keys import bookkeeping_key, take_xact_lock


class BookkeepingTable:
    """One bookkeeping table of one target schema; subclasses give its ``NAME`` and its ``COLUMNS``."""

    NAME: ClassVar[str]
    COLUMNS: ClassVar[str]  # the body of CREATE TABLE (...)

    def __init__(self, schema: str):
        self.schema = schema
        self.table = qualified(schema, self.NAME)

    def ensure(self, conn: Connection) -> None:
        """Create the table when missing (under a transaction lock: two first runs at once do not race)."""
        take_xact_lock(conn, bookkeeping_key(self.schema, self.NAME))
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {self.table} ({self.COLUMNS})"))

    def exists(self, conn: Connection) -> bool:
        """True when the table exists."""
        return conn.execute(text("SELECT to_regclass(:t)"), {"t": self.table}).scalar() is not None
