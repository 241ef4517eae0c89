"""Show the figures a reliability test measured (kills, cuts, lag, memory) in pytest's own output."""

from __future__ import annotations

import logging

import pytest


def show_figures(request: pytest.FixtureRequest, logger: logging.Logger, message: str) -> None:
    """Write ``message`` to the terminal (whatever the capture mode) and log it at WARNING."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + message)
    logger.warning(message)
