"""Migration strategies: realtime and the backfill together (the code is in :mod:`narrow2wide.strategies`)."""

from __future__ import annotations

from narrow2wide.strategies import REGISTRY, Strategy, StrategyOptions, StrategyResult, get_strategy

__all__ = ["REGISTRY", "Strategy", "StrategyOptions", "StrategyResult", "get_strategy"]
