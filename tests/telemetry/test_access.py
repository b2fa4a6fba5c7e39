"""The access log: one line per request with its fields; hostile values escaped; off means no line."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
from typing import TYPE_CHECKING, Any, cast

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.telemetry.access import _BATCH, _FLUSH_S, AccessLog
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


def record(log: AccessLog, **overrides: Any) -> None:
    fields: dict[str, Any] = {"user": "u1", "method": "GET", "host": "app.example.com", "path": "/admin"}
    log.record(request_id="rid-1", status=200, reason="ok", **({"seconds": 0.00123} | fields | overrides))


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


def through_logging(handler: logging.Handler, **overrides: Any) -> str:
    """The line ``logging`` itself writes for ``record``'s fields, through ``handler``'s formatter."""
    lines = Lines(cast("logging.Formatter", handler.formatter))
    only(lines)  # not a StreamHandler: through logging
    record(AccessLog(enabled=True), **overrides)
    only(handler)
    return lines.lines[0]


# Clean values (every field as it is: the line put together without an encoder) and hostile ones.
CASES = [{}, {"user": ""}, {"host": 'evil\r\n"x"', "user": ""}, {"path": "/" + "p" * 600}, {"user": "\ud800\u2028"}]


@pytest.mark.parametrize("overrides", CASES)
@pytest.mark.parametrize("text", [False, True])
async def test_batched_lines_are_the_lines_logging_writes(
    plain: tuple[io.StringIO, logging.StreamHandler[io.StringIO]], *, text: bool, overrides: dict[str, str]
) -> None:
    """With the plain handler, a line is formatted here: the same JSON (fields in order) or text as ``logging``'s."""
    stream, handler = plain
    if text:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    expected = through_logging(handler, **overrides)
    log = AccessLog(enabled=True)
    log.open(asyncio.get_running_loop())
    record(log, **overrides)
    assert stream.getvalue() == ""  # buffered for _FLUSH_S
    await asyncio.sleep(_FLUSH_S * 2)
    (written,) = stream.getvalue().split("\n")[:-1]
    if text:
        assert written == expected
    else:
        same_line(written, expected)


def same_line(ours: str, theirs: str) -> None:
    """The same JSON, fields in order, stamped within a second of each other.

    Not equal to the minute: the clock ticks between the two lines, and a minute (an hour, a day)
    may end in between, however short that is.
    """
    mine, expected = json.loads(ours), json.loads(theirs)
    apart = dt.datetime.fromisoformat(mine.pop("time")) - dt.datetime.fromisoformat(expected.pop("time"))
    assert abs(apart) < dt.timedelta(seconds=1)
    assert list(mine.items()) == list(expected.items())


field = st.text(st.characters(codec="utf-8"), max_size=40) | st.text(max_size=600)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=field, host=field, path=field, user=field, seconds=st.floats(0, 1e6))
@example(method="GET", host="a.example", path="/", user="u", seconds=0.0)
@example(method="GET", host="a.example", path="/", user="u", seconds=1e-7)
def test_any_fields_make_the_json_line_logging_writes(
    plain: tuple[io.StringIO, logging.StreamHandler[io.StringIO]],
    method: str,
    host: str,
    path: str,
    user: str,
    seconds: float,
) -> None:
    """Whatever the client's fields: one valid JSON line, with the fields ``JSONFormatter`` writes, in order."""
    stream, handler = plain
    stream.seek(0)
    stream.truncate()
    fields = {"method": method, "host": host, "path": path, "user": user, "seconds": seconds}
    expected = through_logging(handler, **fields)
    log, loop = AccessLog(enabled=True), asyncio.new_event_loop()
    try:
        log.open(loop)  # never runs: close writes the line
        record(log, **fields)
        log.close()
    finally:
        loop.close()
    (written,) = stream.getvalue().split("\n")[:-1]
    msgspec.json.decode(written)  # strict: valid JSON
    same_line(written, expected)


async def test_lines_are_written_in_order_in_one_write_and_close_writes_the_rest(
    plain: tuple[io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    """Lines waiting go in one write, in order, after _FLUSH_S (not at the next tick: granian's requests
    come one a tick); a full batch goes at once; close writes what is left."""
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
    await asyncio.sleep(0)
    assert writes == []  # a tick later, still waiting
    await asyncio.sleep(_FLUSH_S * 2)
    assert len(writes) == 1
    for n in range(3, 3 + _BATCH + 2):  # a full batch is written without waiting
        log.record(request_id=f"r{n}", user="u", method="GET", host="h", path="/", status=200, reason="ok", seconds=0)
    assert len(writes) == 2
    log.close()  # the last two lines, not yet due, are written by close
    assert len(writes) == 3
    ids = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
    assert ids == [f"r{n}" for n in range(3 + _BATCH + 2)]


async def test_another_handler_on_the_way_gets_records_one_at_a_time(access: tuple[Lines, Lines]) -> None:
    """A handler other than the plain one (a test's, an operator's): records through ``logging``, unbatched."""
    log = AccessLog(enabled=True)
    log.open(asyncio.get_running_loop())
    record(log)
    assert len(access[0].lines) == 1  # at once, no waiting


KEYS = [
    "time",
    "level",
    "logger",
    "message",
    "request_id",
    "user_id",
    "method",
    "host",
    "path",
    "status",
    "reason",
    "latency_ms",
]
# Every character some reader ends a line at (str.splitlines: \x1c-\x1e, NEL, U+2028/2029), and JSON's own.
BREAKS = st.text(st.sampled_from('\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"\\%\x00 \ud800\udfff'), max_size=4)
hostile = st.tuples(BREAKS, field, BREAKS).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=hostile, host=hostile, path=hostile, user=hostile)
@example(method="GET", host='a","status":500,"x":"', path="/", user="u")
@example(method="GET", host="a.example", path="/\u2028{}", user="\u0085")
def test_no_field_ends_a_line_early_or_adds_a_field(
    plain: tuple[io.StringIO, logging.StreamHandler[io.StringIO]], method: str, host: str, path: str, user: str
) -> None:
    """One line to every reader (``str.splitlines`` ends one at U+2028, NEL and \\x1c too, some viewers do), valid
    UTF-8 and strict JSON with exactly the line's fields: the line put together without an encoder relies on
    ``_UNSAFE`` alone for all of that, and a client chooses the method, host and path (user IDs are anyone's
    sign-up)."""
    stream, handler = plain
    only(handler)
    stream.seek(0)
    stream.truncate()
    log, loop = AccessLog(enabled=True), asyncio.new_event_loop()
    try:
        log.open(loop)
        record(log, method=method, host=host, path=path, user=user)
        log.close()
    finally:
        loop.close()
    written = stream.getvalue()
    assert written.endswith("\n")
    assert len(written.splitlines()) == 1
    line = msgspec.json.decode(written.encode("utf-8"))  # strict UTF-8 (no lone surrogate), strict JSON
    assert list(line) == KEYS
    assert (line["request_id"], line["status"], line["reason"]) == ("rid-1", 200, "ok")
