"""The agent's logs are JSON lines, the libraries' standard-library logs included."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shadowscale.agent.config import LogConfig
from shadowscale.agent.logs import configure


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_library_logs_are_json_lines_with_logger_and_traceback(restore_logging: None) -> None:
    """Catches: aiokafka's and aiohttp's stdlib logs bypassing structlog (raw text and multi-line tracebacks in
    an otherwise JSON log)."""
    out = io.StringIO()
    configure(LogConfig(level="info", format="json"), file=out)
    logging.getLogger("aiokafka.conn").warning("Unable connect to %r", "127.0.0.1:9092")
    try:
        raise ConnectionError("broker away")
    except ConnectionError:
        logging.getLogger("aiohttp.client").exception("request failed")
    logging.getLogger("aiokafka").debug("below the level: not shown")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["event"] == "Unable connect to '127.0.0.1:9092'" and lines[0]["logger"] == "aiokafka.conn"
    assert lines[0]["level"] == "warning" and "timestamp" in lines[0]
    assert lines[1]["logger"] == "aiohttp.client" and "ConnectionError: broker away" in lines[1]["exception"]
    configure(LogConfig(level="info", format="json"), file=out)  # configuring again does not double the output
    assert sum(getattr(h, "_shadowscale", False) for h in logging.getLogger().handlers) == 1
