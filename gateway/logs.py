"""Logging set up once: one JSON object a line, with identity and role where the call names them."""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["JsonFormatter", "RateLimitedLog", "setup_logging"]

CONTEXT = ("identity", "role", "table", "source")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT:
            value = record.__dict__.get(key)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


class RateLimitedLog:
    """At most one line a second about one cause, saying how many were suppressed since.

    For causes a sender can repeat at will (bad messages, a table refusing writes): a flood of
    them must not become a flood of log lines as well."""

    __slots__ = ("_interval", "_last", "_logger", "_suppressed")

    def __init__(self, logger: logging.Logger, interval: float = 1.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last = float("-inf")
        self._suppressed = 0

    def warning(self, message: str, *args: object, **kwargs: Any) -> None:
        self.log(logging.WARNING, message, *args, **kwargs)

    def log(self, level: int, message: str, *args: object, **kwargs: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        self._last = now
        if self._suppressed:
            message = f"{message} (and {self._suppressed} more since the last line)"
            self._suppressed = 0
        self._logger.log(level, message, *args, **kwargs)
