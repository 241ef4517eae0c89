"""``--mode pause`` and ``--mode resume``: set or clear the pause flags that backfill workers obey.

The flags live in the target database (:mod:`store.pause_flags`), so a pause reaches the workers
of every host within a few seconds; a pause with nothing running applies to the next run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from narrow2wide.db.catalogue import resolve_ships
from narrow2wide.db.runtime import Runtime
from narrow2wide.store.chunk_ledger import worker_name
from narrow2wide.store.pause_flags import EVERY_SHIP, PauseFlags

log = logging.getLogger("pausing")


@dataclass(frozen=True)
class PauseResult:
    """What ``--mode pause`` set: scope (a ship id, or ``*`` for every ship) -> paused since."""

    paused: dict[str, datetime]


@dataclass(frozen=True)
class ResumeResult:
    """What ``--mode resume`` cleared, and the flags still set afterwards."""

    resumed: dict[str, datetime]
    still_paused: dict[str, datetime] = field(default_factory=dict)


def pause_backfill(rt: Runtime, ship_ids: tuple[str, ...] = ()) -> PauseResult:
    """Pause the backfill of ``ship_ids`` (every ship when empty); running workers hold within seconds.

    A ship id without wide tables is refused (:class:`SchemaError`): a typo must not pause nothing.
    """
    if ship_ids:
        resolve_ships(rt, ship_ids)
    with rt.dbs.target.begin() as conn:
        paused = PauseFlags(rt.settings.target_schema).pause(conn, ship_ids, worker_name())
    log.info("paused: %s", ", ".join("every ship" if s == EVERY_SHIP else s for s in paused))
    return PauseResult(paused)


def resume_backfill(rt: Runtime, ship_ids: tuple[str, ...] = ()) -> ResumeResult:
    """Clear the pause of ``ship_ids`` (every pause when empty); held workers go on, with no restart."""
    flags = PauseFlags(rt.settings.target_schema)
    with rt.dbs.target.begin() as conn:
        resumed = flags.resume(conn, ship_ids)
        left = flags.active(conn)
    return ResumeResult(resumed, left)
