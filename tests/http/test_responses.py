"""Header values: a user's own text escaped as it always was, in bounded work, or sent empty past the bounds."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.http.responses import MAX_ESCAPED_RUNS, MAX_HEADER_VALUE, header_value

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]|[^\x00-\xff]")


def escaped_a_character_at_a_time(text: str) -> str:
    """The escaping as it was before runs (a call per character): the reference."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")), text)


# Safe, control, Latin-1 (sent as it is), other planes and lone surrogates: mixed, so runs come and go.
characters = st.sampled_from(["a", " ", "%", "\x00", "\r", "\n", "\x7f", "é", "\xff", "中", "😀", "\u2028", "\ud800"])


@settings(max_examples=500)
@given(st.lists(characters, max_size=200).map("".join))
@example("Evil\r\nX-Auth-Request-User: admin")
@example("a\tb\x7fc\x0bd\x1fe\u2028f")
def test_a_value_is_escaped_as_a_character_at_a_time_would(text: str) -> None:
    """Within the bounds (200 characters have at most 100 runs), the same bytes as escaping each character."""
    assert header_value(text) == escaped_a_character_at_a_time(text)


def test_past_either_bound_a_value_is_empty() -> None:
    """Longer than MAX_HEADER_VALUE, or more runs to escape than MAX_ESCAPED_RUNS: empty, as a null value."""
    assert header_value("é" * MAX_HEADER_VALUE) == "é" * MAX_HEADER_VALUE  # Latin-1: nothing to escape
    assert header_value("é" * (MAX_HEADER_VALUE + 1)) == ""
    at_bound = "中a" * MAX_ESCAPED_RUNS
    assert header_value(at_bound) == escaped_a_character_at_a_time(at_bound)
    assert header_value(at_bound + "中") == ""
    assert header_value(None) == ""
