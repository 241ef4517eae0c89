"""Pause flags in the target database: ``--mode pause`` sets one, ``--mode resume`` clears it.

A flag lives in the target database, not in a file, so that it reaches the backfill workers of every
host. A flag is either for one ship or for every ship (scope ``*``); the time it was set is the
database's. Backfill workers read the flags between blocks and hold while a flag covers their ship.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection

from narrow2wide.store.bookkeeping import BookkeepingTable

PAUSE_TABLE = "migrator_pause"
EVERY_SHIP = "*"


class PauseFlags(BookkeepingTable):
    """The pause flags of one target schema."""

    NAME = PAUSE_TABLE
    COLUMNS = "scope text PRIMARY KEY, paused_at timestamptz NOT NULL DEFAULT now(), paused_by text"

    def pause(self, conn: Connection, ship_ids: tuple[str, ...], by: str) -> dict[str, datetime]:
        """Set the flags of ``ship_ids`` (every ship when empty); a flag already set keeps its time.

        Returns scope -> paused since.
        """
        self.ensure(conn)
        scopes = list(ship_ids) or [EVERY_SHIP]
        conn.execute(text(f"""INSERT INTO {self.table} (scope, paused_by)
                              SELECT s, :by FROM unnest(CAST(:s AS text[])) AS u(s)
                              ON CONFLICT (scope) DO NOTHING"""), {"s": scopes, "by": by})
        return {s: t for s, t in self.active(conn).items() if s in scopes}

    def resume(self, conn: Connection, ship_ids: tuple[str, ...]) -> dict[str, datetime]:
        """Clear the flags of ``ship_ids`` (every flag when empty); returns the cleared scope -> since."""
        if not self.exists(conn):
            return {}
        rows = conn.execute(text(
            f"""DELETE FROM {self.table}
                WHERE CAST(:s AS text[]) = '{{}}' OR scope = ANY(CAST(:s AS text[]))
                RETURNING scope, paused_at"""), {"s": list(ship_ids)}).all()
        return {scope: since for scope, since in rows}

    def active(self, conn: Connection) -> dict[str, datetime]:
        """Every flag set: scope (a ship id, or ``*``) -> since when."""
        if not self.exists(conn):
            return {}
        return {scope: since for scope, since in conn.execute(text(
            f"SELECT scope, paused_at FROM {self.table} ORDER BY scope")).all()}


def paused_since(flags: dict[str, datetime], ship_id: str) -> datetime | None:
    """When ``ship_id`` was paused under ``flags`` (its own flag or the every-ship one), else None."""
    times = [t for scope, t in flags.items() if scope in (ship_id, EVERY_SHIP)]
    return min(times) if times else None
