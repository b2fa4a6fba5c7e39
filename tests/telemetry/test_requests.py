"""Request IDs: a safe X-Request-ID is kept, a valid traceparent gives its trace ID, anything else a made one."""

from __future__ import annotations

import contextvars

import pytest

from gateway.telemetry.requests import CURRENT, Request, made_id, safe_request_id, traceparent_parts

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize("value", ["abc", "A-1_b.c:d+e/f=g", "x" * 128, "7b0c5a4e-2f1d-4c3b-9a8e-1f2e3d4c5b6a"])
def test_a_bounded_id_of_the_safe_alphabet_is_kept(value: str) -> None:
    """Letters, digits and . _ : + / = -, 1 to 128 of them, as proxies make them."""
    assert safe_request_id(value) == value
    assert Request(value, TRACEPARENT).id == value


@pytest.mark.parametrize(
    "value",
    ["", "x" * 129, "a\nforged line", "a\r\nb", 'a"b', "a b", "a\\b", "a\x00b", "a\x1b[31m", "é", "a;b", "{x}"],
)
def test_anything_else_is_never_taken(value: str) -> None:
    """Too long, empty, a control character, a quote, a space or any other byte: replaced, never echoed."""
    assert safe_request_id(value) is None
    made = Request(value, None).id
    assert made != value
    assert safe_request_id(made) == made
    assert Request(value, TRACEPARENT).id == TRACE  # the traceparent's trace ID before a made one


def test_a_valid_traceparent_gives_its_parts() -> None:
    """Version 00, lower-case hex, neither ID all zeros; anything else is no traceparent."""
    assert traceparent_parts(TRACEPARENT) == (TRACE, PARENT, "01")
    assert Request(None, TRACEPARENT).trace_id == TRACE
    for bad in (
        None,
        "",
        f"01-{TRACE}-{PARENT}-01",
        f"00-{TRACE.upper()}-{PARENT}-01",
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE}-{PARENT}-01-extra",
        f"00-{TRACE}\n-{PARENT}-01",
        TRACEPARENT + " " * 100,
    ):
        assert traceparent_parts(bad) is None, bad
        assert Request(None, bad).trace_id == ""


def test_made_ids_are_unique_safe_and_made_once_per_request() -> None:
    """A made ID is safe, never repeats, and a request keeps the one it was given."""
    ids = {made_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(safe_request_id(i) for i in ids)
    request = Request(None, None)
    assert request.id == request.id
    assert request.tier == "none"


def test_the_current_request_is_per_context() -> None:
    """CURRENT is None outside a request, and a request set in one context is not seen in another."""
    assert CURRENT.get() is None
    request = Request("one", None)
    seen = contextvars.copy_context().run(lambda: (CURRENT.set(request), CURRENT.get())[1])
    assert seen is request
    assert CURRENT.get() is None
