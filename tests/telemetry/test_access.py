"""The access log: one line per request with its fields; hostile values escaped; off means no line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import TYPE_CHECKING, cast

import pytest

from gateway.telemetry.access import _BATCH, AccessLog
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


@pytest.fixture
def plain() -> Iterator[tuple[io.StringIO, logging.StreamHandler[io.StringIO]]]:
    """One stream handler, JSON, on a string stream, as ``configure_logging`` makes (``only`` makes it the only one)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("gateway.access")
    level, handlers = logger.level, logger.handlers[:]
    logger.propagate = False
    try:
        yield stream, handler
    finally:
        logger.propagate = True
        logger.handlers[:] = handlers
        logger.setLevel(level)


def only(handler: logging.Handler) -> None:
    """``handler`` the one gateway.access reaches (pytest adds its own capturing handlers as a test starts)."""
    logging.getLogger("gateway.access").handlers[:] = [handler]


def through_logging(handler: logging.Handler, **overrides: str) -> str:
    """The line ``logging`` itself writes for ``record``'s fields, through ``handler``'s formatter."""
    lines = Lines(cast("logging.Formatter", handler.formatter))
    only(lines)  # not a StreamHandler: through logging
    record(AccessLog(enabled=True), **overrides)
    only(handler)
    return lines.lines[0]


@pytest.mark.parametrize("text", [False, True])
async def test_batched_lines_are_the_lines_logging_writes(
    plain: tuple[io.StringIO, logging.StreamHandler[io.StringIO]], *, text: bool
) -> None:
    """With the plain handler, a line is formatted here: the same JSON (fields in order) or text as ``logging``'s."""
    stream, handler = plain
    if text:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    hostile = {"host": 'evil\r\n"x"', "user": ""}
    expected = through_logging(handler, **hostile)
    log = AccessLog(enabled=True)
    log.open(asyncio.get_running_loop())
    record(log, **hostile)
    assert stream.getvalue() == ""  # buffered until the loop's next tick
    await asyncio.sleep(0)
    (written,) = stream.getvalue().splitlines()
    if text:
        assert written == expected
    else:
        ours, theirs = json.loads(written), json.loads(expected)
        assert ours.pop("time")[:16] == theirs.pop("time")[:16]  # to the minute: a second may have ticked
        assert list(ours.items()) == list(theirs.items())


async def test_lines_are_written_in_order_in_one_write_and_close_writes_the_rest(
    plain: tuple[io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    """A tick's lines go in one write, in order; a full batch goes at once; close writes what is left."""
    stream, handler = plain
    only(handler)
    writes: list[str] = []
    write = stream.write

    def counted(text: str) -> int:
        writes.append(text)
        return write(text)

    stream.write = counted  # type: ignore[method-assign]
    log = AccessLog(enabled=True)
    log.open(asyncio.get_running_loop())
    for n in range(3):
        log.record(request_id=f"r{n}", user="u", method="GET", host="h", path="/", status=200, reason="ok", seconds=0)
    await asyncio.sleep(0)
    assert len(writes) == 1
    for n in range(3, 3 + _BATCH + 2):  # a full batch is written without waiting for the tick
        log.record(request_id=f"r{n}", user="u", method="GET", host="h", path="/", status=200, reason="ok", seconds=0)
    assert len(writes) == 2
    log.close()  # no tick ran: the last two lines are written by close
    assert len(writes) == 3
    ids = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
    assert ids == [f"r{n}" for n in range(3 + _BATCH + 2)]


async def test_another_handler_on_the_way_gets_records_one_at_a_time(access: tuple[Lines, Lines]) -> None:
    """A handler other than the plain one (a test's, an operator's): records through ``logging``, unbatched."""
    log = AccessLog(enabled=True)
    log.open(asyncio.get_running_loop())
    record(log)
    assert len(access[0].lines) == 1  # at once, no tick
