"""Logs: JSON lines with the record's extra fields; decision lines name credentials by fingerprint, never by value."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import time
from typing import TYPE_CHECKING

import pytest

from gateway.credentials.tokens import find_credential, header_credential, sign
from gateway.telemetry.logs import DecisionLog, JSONFormatter, configure_logging, fingerprint

if TYPE_CHECKING:
    from collections.abc import Iterator

SECRET = "a-secret-long-enough-for-the-gateway-0123456789"
TOKEN = "t" * 32


class Lines(logging.Handler):
    """Keeps every record it is handed, formatted as JSON."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JSONFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def decisions() -> Iterator[tuple[logging.Logger, Lines]]:
    """The decision logger with a handler of the test's own; its level and handlers restored after."""
    logger = logging.getLogger("gateway.lookup.decision")
    level, lines = logger.level, Lines()
    logger.addHandler(lines)
    try:
        yield logger, lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)


def test_a_record_is_one_json_object_with_its_extra_fields() -> None:
    """Time (UTC, milliseconds), level, logger, the formatted message and every extra field."""
    record = logging.LogRecord("gateway.x", logging.WARNING, __file__, 1, "saw %d things", (3,), None)
    record.__dict__["backend"] = "redis"
    line = JSONFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", parsed.pop("time"))
    assert parsed == {"level": "warning", "logger": "gateway.x", "message": "saw 3 things", "backend": "redis"}


def test_an_exception_is_one_field_of_the_same_line() -> None:
    """A record with exc_info carries the traceback in "exception", still one line of JSON."""
    try:
        raise ValueError("boom")  # noqa: TRY301
    except ValueError:
        record = logging.LogRecord("gateway.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JSONFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_configure_logging_picks_the_format_and_the_gateways_level() -> None:
    """json gives JSONFormatter on stderr, text a plain formatter; the gateway's loggers get the level."""
    root, gateway = logging.getLogger(), logging.getLogger("gateway")
    saved = (root.handlers[:], root.level, gateway.level)
    try:
        configure_logging("debug", "json")
        assert isinstance(root.handlers[0].formatter, JSONFormatter)
        assert gateway.level == logging.DEBUG
        configure_logging("warning", "text")
        assert not isinstance(root.handlers[0].formatter, JSONFormatter)
        assert gateway.level == logging.WARNING
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        gateway.setLevel(saved[2])


def test_a_fingerprint_is_a_short_one_way_name_of_the_credentials_key() -> None:
    """8 hex digits of the SHA-256 of the credential's key; none for no credential."""
    credential = header_credential(sign(TOKEN, SECRET))
    assert fingerprint(credential) == hashlib.sha256(credential.key.encode()).hexdigest()[:8]
    assert fingerprint(None) == ""
    assert fingerprint(header_credential(sign("u" * 32, SECRET))) != fingerprint(credential)


def test_decision_lines_carry_fingerprints_never_tokens(decisions: tuple[logging.Logger, Lines]) -> None:
    """At debug every decision is logged with reason, kind, fingerprint and latency, and no token, cookie or key."""
    logger, lines = decisions
    logger.setLevel(logging.DEBUG)
    log = DecisionLog(sample=0.0)
    assert log.enabled
    value = sign(TOKEN, SECRET)
    cookie = find_credential(None, None, f"better-auth.session_token={value}", ("better-auth.session_token",))
    bearer = find_credential("Bearer " + value, None, None, ("better-auth.session_token",))
    for credential in (cookie, bearer, None):
        log.record("ok", credential, time.perf_counter())
    assert len(lines.lines) == 3
    for line, credential in zip(lines.lines, (cookie, bearer, None), strict=True):
        assert TOKEN not in line
        assert value.split(".")[1] not in line  # nor the signature
        parsed = json.loads(line)
        assert parsed["fingerprint"] == fingerprint(credential)
        assert parsed["reason"] == "ok"
        assert parsed["level"] == "debug"
        assert parsed["latency_ms"] >= 0
    assert [json.loads(line)["credential"] for line in lines.lines] == ["cookie", "bearer", "none"]


def test_at_info_decisions_are_sampled_and_above_it_none(decisions: tuple[logging.Logger, Lines]) -> None:
    """At info, sample 1 logs every decision (at info) and sample 0 none; at warning nothing, whatever the sample."""
    logger, lines = decisions
    logger.setLevel(logging.INFO)
    every, never = DecisionLog(sample=1.0), DecisionLog(sample=0.0)
    assert not never.enabled
    every.record("expired", None, time.perf_counter())
    never.record("expired", None, time.perf_counter())
    assert [json.loads(line)["level"] for line in lines.lines] == ["info"]
    logger.setLevel(logging.WARNING)
    assert not DecisionLog(sample=1.0).enabled
