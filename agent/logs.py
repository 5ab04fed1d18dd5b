"""structlog set-up: JSON lines on stderr (or a console renderer), every record carrying its logger and level.

The libraries' own standard-library logs (aiokafka, aiohttp, kubernetes-asyncio) go through the same renderer, so
the agent's output is one JSON object per line, tracebacks included as a field, never raw multi-line text."""

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
    handler = logging.StreamHandler(file or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_shadowscale", False)]:
        root.removeHandler(h)
    handler._shadowscale = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
