"""The per-ship cutoff, realtime watermark and cursors (the code is in :mod:`narrow2wide.store.cutoff_store`)."""

from __future__ import annotations

from narrow2wide.store.cutoff_store import CutoffStore, ShipState

__all__ = ["CutoffStore", "ShipState"]
