"""structlog set-up: JSON lines on stderr (or a console renderer), every record carrying its logger and level."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from shadowscale.agent.config import LogConfig


def configure(cfg: LogConfig, file: TextIO | None = None) -> None:
    """Log at ``cfg.level`` in ``cfg.format`` to ``file`` (default stderr)."""
    level = getattr(logging, cfg.level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if cfg.format == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=file or sys.stderr),
        cache_logger_on_first_use=False,
    )
