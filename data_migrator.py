"""Step 3 (``--mode migration-only``) and the Python API.

``from data_migrator import data_migrator`` gives a lazy facade for a Python shell: nothing is
read or connected until a method is called. The API is :mod:`narrow2wide.api`, the backfill
:mod:`narrow2wide.backfill.runner`, status :mod:`narrow2wide.checks.status`.
"""

from __future__ import annotations

from narrow2wide.api import DataMigrator, data_migrator
from narrow2wide.backfill.runner import (
    BackfillOptions,
    BackfillResult,
    drain_ledger,
    parse_cutoff,
    prepare_backfill,
    run_backfill,
)
from narrow2wide.checks.status import ShipStatus, StatusReport, migration_status
from narrow2wide.db.catalogue import database_now, newest_wide_time, newest_wide_times, resolve_ships

__all__ = [
    "BackfillOptions", "BackfillResult", "DataMigrator", "ShipStatus", "StatusReport",
    "data_migrator", "database_now", "drain_ledger", "migration_status", "newest_wide_time",
    "newest_wide_times", "parse_cutoff", "prepare_backfill", "resolve_ships", "run_backfill",
]
