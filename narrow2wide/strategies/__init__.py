"""Migration strategies: run realtime processing and the backfill of history together.

``main.py`` dispatches on :data:`REGISTRY`; an unknown name lists the valid ones.
"""

from __future__ import annotations

from narrow2wide.common.errors import ConfigError
from narrow2wide.strategies.base import Strategy, StrategyOptions, StrategyResult
from narrow2wide.strategies.concurrent import ConcurrentStrategy
from narrow2wide.strategies.hybrid import HybridStrategy
from narrow2wide.strategies.streaming import StreamingStrategy

REGISTRY: dict[str, type[Strategy]] = {
    ConcurrentStrategy.name: ConcurrentStrategy,
    HybridStrategy.name: HybridStrategy,
    StreamingStrategy.name: StreamingStrategy,
}


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``; :class:`ConfigError` listing the valid names otherwise."""
    try:
        return REGISTRY[name]()
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(sorted(REGISTRY))}") from None


__all__ = ["REGISTRY", "Strategy", "StrategyOptions", "StrategyResult", "get_strategy"]
