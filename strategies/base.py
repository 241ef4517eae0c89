"""What every strategy shares (the code is in :mod:`narrow2wide.strategies.base`)."""

from __future__ import annotations

from narrow2wide.strategies.base import Strategy, StrategyOptions, StrategyResult

__all__ = ["Strategy", "StrategyOptions", "StrategyResult"]
