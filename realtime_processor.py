"""Step 4 (``--mode realtime``): keep the wide tables current (the code is in :mod:`narrow2wide.realtime.processor`)."""

from __future__ import annotations

from narrow2wide.realtime.processor import (
    CycleResult,
    ProcessorMemory,
    RealtimeOptions,
    RealtimeResult,
    ShipLocks,
    run_cycle,
    run_realtime,
)

__all__ = ["CycleResult", "ProcessorMemory", "RealtimeOptions", "RealtimeResult", "ShipLocks", "run_cycle",
           "run_realtime"]
