"""Logging: one structlog pipeline per kernel, no global configuration touched.

``log_format="off"`` gives a logger whose methods are no-ops (the default: a library
must not print); ``console`` renders for people, ``json`` for machines, and
``structlog`` defers to the application's own ``structlog.configure``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["NULL_LOGGER", "make_logger"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def make_logger(fmt: str, level: str) -> Any:
    if fmt == "structlog":
        return structlog.get_logger("aios")
    if fmt == "off":
        return NULL_LOGGER
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
    )


class _Off:
    """A logger that drops everything at the cost of one method call."""

    def bind(self, **_: Any) -> _Off:
        return self

    def _drop(self, *_: Any, **__: Any) -> None:
        return None

    debug = info = warning = error = exception = critical = _drop


NULL_LOGGER: Any = _Off()
