"""One handler per ``--mode``: open the runtime, call one library function, return its result.

Kept apart from ``main.py`` so that the CLI module stays a parser and printer only.
Each handler returns ``(result, exit_code)``.
"""

from __future__ import annotations

from collections.abc import Callable

from config import Settings
from runtime import open_runtime

Handler = Callable[[Settings, dict], tuple[object, int]]


def demo(settings: Settings, opts: dict) -> tuple[object, int]:
    """Seed a generated fleet into the source table."""
    from demo_data import DemoSpec, seed_demo

    spec = DemoSpec(ships=opts["ships"], channels=opts["channels"], days=opts["days"])
    with open_runtime(settings) as rt:
        return seed_demo(rt.dbs.source, rt.source, spec), 0


HANDLERS: dict[str, Handler] = {
    "demo": demo,
}
