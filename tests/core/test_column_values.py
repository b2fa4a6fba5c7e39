"""Column values as Better Auth's JavaScript reads them: JSON of any depth and size, dates of any year."""

from __future__ import annotations

import json

import msgspec
import pytest

from gateway.core.column_values import (
    MAX_DEPTH,
    RawJSON,
    decode_date,
    decode_json,
    decode_timestamp,
    js_iso,
    object_members,
)

DEEP = "[" * 1500 + "]" * 1500


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"theme": "dark", "n": [1, 2.5, -3]}', {"theme": "dark", "n": [1, 2.5, -3]}),
        ('{"x": 100000000000000000000000000000}', {"x": 1e29}),  # jsonb's rendering of 1e29
        ("[9007199254740993, 9007199254740992, -9007199254740993]", [2**53, 2**53, -(2**53)]),
        ("1" + "0" * 400, float("inf")),  # JSON.parse: Infinity (JSON.stringify writes null)
        ("0.1234567890123456789", 0.1234567890123456789),
    ],
    ids=["plain", "1e29", "past 2**53", "past a double", "long fraction"],
)
def test_json_numbers_are_javascripts_doubles(text: str, expected: object) -> None:
    assert decode_json(text) == expected


def test_json_too_deep_for_python_is_kept_as_text() -> None:
    assert decode_json(DEEP) == RawJSON(DEEP)


def test_json_deeper_than_max_depth_is_kept_as_text_however_short_of_the_stack() -> None:
    """Decodable here, it would be too deep to render or compare further up some stack: kept as text."""
    deepest = '{"a": ' + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "}"
    assert decode_json(deepest) == {"a": json.loads(deepest)["a"]}  # at the limit: decoded
    for text in ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), '{"x": 1e0, "a": ' + deepest + "}"):
        assert decode_json(text) == RawJSON(text)
    deep_digits = '{"big": 9007199254740993, "a": ' + deepest + "}"  # the careful path's too
    assert decode_json(deep_digits) == RawJSON(deep_digits)
    wide = json.dumps([[[{"k": [i]}]] for i in range(1000)])  # many brackets, shallow: decoded
    assert decode_json(wide) == json.loads(wide)


@pytest.mark.parametrize("text", ['{"note": "\\ud800"}', '["\\udfff x"]', '"a\\uDBFFb"'])
def test_json_with_a_lone_surrogate_is_kept_as_text(text: str) -> None:
    """``json.loads`` reads an unpaired surrogate into a str no encoder writes: kept as text (as
    ``JSON.stringify`` writes it back, escaped) rather than failing every answer that carries it."""
    assert decode_json(text) == RawJSON(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"note": "\\ud83d\\ude00"}', {"note": "\U0001f600"}),  # a pair: one character
        ('{"note": "\\\\ud800"}', {"note": "\\ud800"}),  # an escaped backslash, then letters
    ],
    ids=["pair", "escaped backslash"],
)
def test_json_without_a_lone_surrogate_is_decoded(text: str, expected: object) -> None:
    value = decode_json(text)
    assert value == expected
    msgspec.json.encode(value)


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (7305, "2020-01-01"),
        (2**31 - 1, "9999-12-31"),  # 'infinity', as asyncpg's own codec
        (2_921_940, "+010000-01-01T00:00:00.000Z"),  # past datetime: new Date(...).toISOString()
        (-730_485, "0000-01-01T00:00:00.000Z"),  # 1 BC
    ],
    ids=["2020", "infinity", "year 10000", "year 0"],
)
def test_dates_decode_as_javascript_reads_them(days: int, expected: str) -> None:
    decoded = decode_date((days,))
    assert (decoded if isinstance(decoded, str) else str(decoded)) == expected


@pytest.mark.parametrize(
    ("ms", "iso"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (253402300800000, "+010000-01-01T00:00:00.000Z"),
        (-62167219200000, "0000-01-01T00:00:00.000Z"),
        (-62198755200000, "-000001-01-01T00:00:00.000Z"),
        (8.64e15, "+275760-09-13T00:00:00.000Z"),
        (8.64e15 + 1, None),
    ],
)
def test_dates_render_as_javascripts_to_json(ms: float, iso: str | None) -> None:
    assert js_iso(ms) == iso  # values from node: new Date(ms).toJSON()


def test_timestamps_outside_pythons_range_keep_their_time() -> None:
    far = decode_timestamp((252_455_616_000_000_000,))  # 10000-01-01, microseconds since 2000
    assert not isinstance(far, type(decode_timestamp((0,))))
    assert far.iso() == "+010000-01-01T00:00:00.000Z"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "b": [1, {"c": "x\\"y}"}], "c": {"d": {"e": 2}}, "f": "}", "a": 3}',
        " { } ",
        '{"deep": ' + DEEP + ', "after": true}',
    ],
)
def test_object_members_read_a_valid_object_one_member_at_a_time(text: str) -> None:
    members = object_members(text)
    assert members is not None
    if "deep" in members:
        assert members == {"deep": DEEP, "after": "true"}
    else:
        assert {k: json.loads(v) for k, v in members.items()} == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1,}',
        '{"a" 1}',
        "[1]",
        '"x"',
        '{"a": 1} x',
        '{"a": [1,]}',
        '{"a": tru}',
        '{"a": 01}',
        '{"a": NaN}',
        '{"a": {"b": 1}',
        '{"a": [}',
        '{"a": "\x01"}',
        "{" + DEEP + "}",
        '{"d": ' + DEEP[:-1] + "}",
    ],
)
def test_object_members_refuse_what_json_parse_refuses(text: str) -> None:
    assert object_members(text) is None
