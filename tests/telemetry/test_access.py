"""The access log: one line per request with its fields; hostile values escaped; off means no line."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import pytest

from gateway.telemetry.access import AccessLog
from gateway.telemetry.logs import JSONFormatter

if TYPE_CHECKING:
    from collections.abc import Iterator


class Lines(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def access() -> Iterator[tuple[Lines, Lines]]:
    """gateway.access at info, formatted as JSON and as text."""
    logger = logging.getLogger("gateway.access")
    level = logger.level
    handlers = Lines(JSONFormatter()), Lines(logging.Formatter("%(message)s"))
    logger.setLevel(logging.INFO)
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield handlers
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(level)


def record(log: AccessLog, **overrides: str) -> None:
    fields = {"user": "u1", "method": "GET", "host": "app.example.com", "path": "/admin"} | overrides
    log.record(request_id="rid-1", status=200, reason="ok", seconds=0.00123, **fields)


def test_a_line_has_every_field(access: tuple[Lines, Lines]) -> None:
    """Request ID, user, method, host, path, status, reason and latency, in JSON and in the text message."""
    as_json, as_text = access
    record(AccessLog(enabled=True))
    line = json.loads(as_json.lines[0])
    assert {k: line[k] for k in ("request_id", "user_id", "method", "host", "path", "status", "reason")} == {
        "request_id": "rid-1",
        "user_id": "u1",
        "method": "GET",
        "host": "app.example.com",
        "path": "/admin",
        "status": 200,
        "reason": "ok",
    }
    assert line["latency_ms"] == 1.23
    assert line["logger"] == "gateway.access"
    assert as_text.lines == ["GET app.example.com/admin 200 ok 1.230ms user=u1 id=rid-1"]


def test_hostile_values_are_escaped_and_bounded(access: tuple[Lines, Lines]) -> None:
    """CR, LF, quotes, spaces and backslashes become %XX: the text line stays one line that forges nothing."""
    as_json, as_text = access
    record(AccessLog(enabled=True), host='evil\r\n2026 GET "x" ok', path="/a b\\c" + "p" * 2000, user="")
    (text,) = as_text.lines
    assert "\n" not in text
    assert "\r" not in text
    assert text.startswith("GET evil%0D%0A2026%20GET%20%22x%22%20ok/a%20b%5Cc")
    assert text.endswith(" user=- id=rid-1")
    assert len(json.loads(as_json.lines[0])["path"]) < 600


def test_off_writes_nothing_and_on_writes_whatever_the_log_level(access: tuple[Lines, Lines]) -> None:
    """Disabled (the default), no line; enabled, lines even when the gateway logs only warnings."""
    record(AccessLog(enabled=False))
    assert access[0].lines == []
    logging.getLogger("gateway.access").setLevel(logging.WARNING)
    record(AccessLog(enabled=True))
    assert len(access[0].lines) == 1
