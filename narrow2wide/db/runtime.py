"""The context every step runs in: settings, engines and the source table, opened once."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from narrow2wide.common.config import Settings
from narrow2wide.db.database import Databases, open_databases
from narrow2wide.db.narrow_source import SourceTable


@dataclass(frozen=True)
class Runtime:
    """Settings plus the open databases; pass it in, never build it deep inside a function."""

    settings: Settings
    dbs: Databases

    @cached_property
    def source(self) -> SourceTable:
        """The narrow source table (one immutable object for the runtime's life)."""
        return SourceTable(self.settings.source_schema, self.settings.source_table)

    def close(self) -> None:
        """Dispose of the engines."""
        self.dbs.dispose()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_runtime(settings: Settings, application_name: str = "narrow-to-wide") -> Runtime:
    """Connect to the databases of ``settings`` (starting the embedded one when none is set)."""
    return Runtime(settings=settings, dbs=open_databases(settings, application_name))
