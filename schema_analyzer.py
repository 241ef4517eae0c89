"""Step 1 (``--mode schema-only``): analyse the source and write the schema file.

The code is in :mod:`narrow2wide.schema.analyzer`; the data model in :mod:`narrow2wide.common.model`.
"""

from __future__ import annotations

from narrow2wide.common.model import SCHEMA_VERSION, ChannelSchema, SchemaAnalysis, ShipSchema, TablePart
from narrow2wide.schema.analyzer import analyze_ship, analyze_source, load_schema, read_routing_file, save_schema

__all__ = [
    "SCHEMA_VERSION", "ChannelSchema", "SchemaAnalysis", "ShipSchema", "TablePart",
    "analyze_ship", "analyze_source", "load_schema", "read_routing_file", "save_schema",
]
