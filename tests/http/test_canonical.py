"""Canonical hosts and paths: what rules see, and what is refused (pure, no I/O)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http import canonical


@pytest.mark.parametrize(
    ("path", "decoded"),
    [
        ("/%61dmin/x", "/admin/x"),
        ("/public/%2e%2E/admin", "/public/../admin"),
        ("/%7e%2D%5f%30", "/~-_0"),
        ("/caf%c3%a9", "/caf%C3%A9"),  # not unreserved: kept encoded, hex digits upper-cased
        ("/a%20b%3f", "/a%20b%3F"),
        ("/plain", "/plain"),
    ],
)
def test_unreserved_characters_are_decoded(path: str, decoded: str) -> None:
    """%XX of an unreserved character is that character (RFC 3986 6.2.2.2); other escapes stay, upper-cased."""
    assert canonical.decode_unreserved(path) == decoded


@pytest.mark.parametrize("path", ["/%2f", "/%2F", "/%5c", "/%25", "/%00", "/%1f", "/%7F", "/%zz", "/%4", "/a%"])
def test_escapes_whose_meaning_depends_on_the_decoder_are_refused(path: str) -> None:
    """Encoded / \\ % and control characters, and malformed escapes: no single reading, refused."""
    assert canonical.decode_unreserved(path) is None
    assert canonical.uri(path) is None


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        ("/public/../admin/x", "/admin/x"),
        ("//admin//x", "/admin/x"),
        ("/./admin/./x", "/admin/x"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/", "/a/"),
        ("/../../etc", "/etc"),
        ("/..", "/"),
        ("/", "/"),
        ("//", "/"),
        ("/a/..b/c", "/a/..b/c"),  # not a dot segment
    ],
)
def test_dot_segments_and_repeated_slashes(path: str, resolved: str) -> None:
    """Dot segments resolve (never above the root) and repeated slashes merge, as nginx normalises."""
    assert canonical.resolve(path) == resolved


def test_readings() -> None:
    """Every reading a part behind the proxy may take: as sent, decoded, canonical, without path parameters."""
    assert canonical.readings("/a/b") == {"/a/b"}
    assert canonical.readings("/public/../admin/x") == {"/public/../admin/x", "/admin/x"}
    assert canonical.readings("/public/%2e%2e/admin/x") == {"/public/%2e%2e/admin/x", "/public/../admin/x", "/admin/x"}
    assert "/admin/x" in canonical.readings("/public/..;/admin/x")  # Tomcat and Spring read "..;" as ".."
    assert canonical.readings("/%61dmin") == {"/%61dmin", "/admin"}


@pytest.mark.parametrize("uri", ["/", "/a/b?x=1,2&y=%20", "/a%20b", "/a;b=1/c", "/[x]|^", "/a?"])
def test_accepted_uris(uri: str) -> None:
    """Origin-form targets in visible ASCII are taken as they are; a comma in the query is fine."""
    assert canonical.uri(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "a/b",
        "*",
        "http://h/x",
        "/a b",
        "/a,b",
        "/public/x,/admin/y",
        "/a\\b",
        "/a#b",
        "/a?b#c",
        "/é",
        "/a\tb",
        '/a"b',
    ],
)
def test_refused_uris(uri: str) -> None:
    """No leading slash, whitespace, a comma (two values joined), a backslash, a fragment, non-ASCII: refused."""
    assert canonical.uri(uri) is None


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("app.test", "app.test"),
        ("APP.Test.", "app.test"),
        ("app.test:8080", "app.test"),
        ("app.test.:8080", "app.test"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:443", "[::1]"),
        ("under_score.internal", "under_score.internal"),
    ],
)
def test_hostnames(host: str, name: str) -> None:
    """Hosts compare as DNS does: lower case, one trailing dot folded, port dropped."""
    assert canonical.hostname(host) == name


@pytest.mark.parametrize(
    "host",
    [
        "",
        "app.test?",
        "app.test#",
        "a@app.test",
        "app.test/x",
        "app.test ",
        " app.test",
        "app..test",
        "app.test..",
        "app.test%2e",
        "app.test:",
        "app.test:123456",
        "app.test:80:80",
        "app.test,evil.test",
        "app\\test",
        ".app.test",
        "[::1",
        "ápp.test",
    ],
)
def test_refused_hostnames(host: str) -> None:
    """A host two parsers could split differently (? # @ / % whitespace, empty labels, bad ports): refused."""
    assert canonical.hostname(host) is None


def test_methods() -> None:
    """A method is an upper-case token, as proxies send it; lists and lower case are refused."""
    assert canonical.method("DELETE") == "DELETE"
    assert canonical.method("VERSION-CONTROL") == "VERSION-CONTROL"
    for bad in ("get", "GET, POST", "", "G E", "GET\r\n"):
        assert canonical.method(bad) is None


HOSTISH = st.text(st.sampled_from("aZ0_.-:[]9%é \u212a"), max_size=12)  # K (KELVIN SIGN) lowers to "k"
texts = st.one_of(
    HOSTISH,
    st.text(max_size=20),
    st.builds(lambda n, tail: "a" * n + tail, st.integers(290, 310), HOSTISH),  # around hostname's bound
    st.builds(lambda n, tail: "/" + "p" * n + tail, st.integers(505, 515), st.sampled_from(["", "?q=1", "%2F", "/."])),
)


@settings(max_examples=500, deadline=None)
@given(texts)
def test_memoised_answers_are_the_functions_answers(text: str) -> None:
    """``hostname`` and ``uri``'s path check remember answers: the first and the remembered answer are
    the unmemoised function's, on either side of the length each remembers up to."""
    for function in (canonical.hostname, canonical._usable_path):  # uri remembers its path check only
        plain = inspect.unwrap(function)(text)  # the function functools.wraps wrapped
        assert function(text) == plain
        assert function(text) == plain  # the second time, from memory


def test_a_host_that_only_lower_cases_to_ascii_is_refused() -> None:
    """The Kelvin sign lower-cases to an ASCII "k": \u212aiosk.example.com is not kiosk.example.com.

    granian drops non-ASCII header values today; the check must not depend on that (red team, issue 20).
    """
    assert canonical.hostname("\u212aiosk.example.com") is None
    assert canonical.hostname("Kiosk.Example.com") == "kiosk.example.com"


def test_a_query_is_checked_but_not_remembered() -> None:
    """Queries change from link to link and may carry a token: only the path's answer is kept."""
    memo = _memo(canonical._usable_path)  # the memoised part of uri
    assert canonical.uri("/verify-email?token=first") is not None
    size = memo.cache_info().currsize
    for n in range(20):
        assert canonical.uri(f"/verify-email?token={n:040d}") is not None
    assert memo.cache_info().currsize == size  # one path remembered, however many queries
    assert canonical.uri("/verify-email?a#b") is None  # the query is still checked


def _memo(function: object) -> Any:
    """The lru_cache behind a memoised function, from its closure (``_memoised`` keeps no other handle)."""
    cells = getattr(function, "__closure__", None) or ()
    (cache,) = [cell.cell_contents for cell in cells if hasattr(cell.cell_contents, "cache_info")]
    return cache
