"""Step 2 (``--mode tables-only``): the wide tables and their metadata.

The code is in :mod:`narrow2wide.schema.tables`; the metadata reads in :mod:`narrow2wide.db.catalogue`.
"""

from __future__ import annotations

from narrow2wide.db.catalogue import COLUMNS_META, TABLES_META, load_ship_layout, load_ship_layouts
from narrow2wide.schema.tables import ShipTablesResult, TablesResult, add_channels, create_tables

__all__ = [
    "COLUMNS_META", "TABLES_META", "ShipTablesResult", "TablesResult",
    "add_channels", "create_tables", "load_ship_layout", "load_ship_layouts",
]
