"""The tool as a Python object: ``from data_migrator import data_migrator``.

A lazy facade for a Python shell: nothing is read or connected until a method is called.
"""

from __future__ import annotations

from narrow2wide.backfill.runner import BackfillOptions, BackfillResult, run_backfill
from narrow2wide.checks.status import migration_status
from narrow2wide.checks.validator import validate
from narrow2wide.common.config import Settings, load_settings
from narrow2wide.common.jsonable import to_jsonable
from narrow2wide.db.runtime import Runtime, open_runtime


class DataMigrator:
    """The tool as a Python object; settings load and connections open on first use.

    >>> from data_migrator import data_migrator
    >>> data_migrator.get_migration_status("IMO9999993")["status"]
    """

    def __init__(self, settings: Settings | None = None):
        self._settings = settings
        self._runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        """The open runtime (created on first use)."""
        if self._runtime is None:
            self._runtime = open_runtime(self._settings or load_settings())
        return self._runtime

    def close(self) -> None:
        """Dispose of the connections."""
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None

    def migrate(self, ship_ids: tuple[str, ...] = (), **options: object) -> BackfillResult:
        """Run the backfill (as ``--mode migration-only``)."""
        return run_backfill(self.runtime, ship_ids, BackfillOptions(progress=False, **options))  # type: ignore[arg-type]

    def get_migration_status(self, ship_id: str) -> dict:
        """A dict with at least ``status`` and ``record_count`` for one ship."""

        report = migration_status(self.runtime, (ship_id,))
        return to_jsonable(report.ships[0])  # type: ignore[return-value]

    def get_migration_statistics(self) -> dict:
        """Overall and per-ship figures."""

        report = migration_status(self.runtime)
        ships = [to_jsonable(s) for s in report.ships]
        overall = {
            "ships": len(ships),
            "chunks_total": sum(s.chunks_total for s in report.ships),
            "chunks_done": sum(s.chunks_done for s in report.ships),
            "chunks_failed": sum(s.chunks_failed for s in report.ships),
            "rows_read": sum(s.rows_read for s in report.ships),
            "record_count": sum(s.record_count for s in report.ships),
            "rejected": sum(s.rejected for s in report.ships),
        }
        return {"overall": overall, "ships": ships}

    def validate_migration(self, ship_id: str) -> dict:
        """A dict with at least ``status`` and ``message``, from the same check as ``--mode validate``."""

        report = validate(self.runtime, (ship_id,))
        ship = report.ships[0]
        return dict(to_jsonable(ship), status="passed" if ship.ok else "failed", message=ship.message)  # type: ignore[arg-type]


data_migrator = DataMigrator()
