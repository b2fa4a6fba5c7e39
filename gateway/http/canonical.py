r"""Canonical hosts and paths of an original request, before any rule sees them. No I/O.

The proxy, the gateway and the app must agree on what a request names; where they could
disagree, the request is refused, never matched against the default rule (issue 14, finding 2).

Hosts are compared as DNS compares them: lower case, a trailing dot folded, the port dropped.
Anything else than a name, an IPv4 address or a bracketed IPv6 address (``?``, ``#``, ``@``, ``/``,
``%``, whitespace, empty labels) is refused: two parsers would split such a value differently.

A path is read the ways the parts behind the proxy may read it:

1. as sent (a router matching the raw prefix);
2. percent-decoded where RFC 3986 §6.2.2.2 allows (unreserved characters; hex digits upper-cased);
3. canonical, as nginx and Envoy normalise it: 2, then repeated slashes merged and dot segments
   resolved (§5.2.4);
4. 3 with ``;`` path parameters dropped first (Tomcat and Spring read ``/..;/`` as ``/../``).

``policy.Rules`` requires every reading, matched case-sensitively and case-insensitively, to
select the same rule: ``/ADMIN/x``, ``//admin/x``, ``/public/../admin/x`` and ``/Public/x`` reach no
rule they do not plainly name. Refused outright: characters outside visible ASCII, ``\\``, ``,``
(a second value joined to the first), malformed ``%`` escapes, and the encoded ``/``, ``\\``, ``%``
and control characters whose meaning depends on how many times a part decodes them.
"""

from __future__ import annotations

import functools
import re
import string
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# Visible ASCII minus what no proxy passes unambiguously: "\" (a "/" to some servers), "," (two
# values joined), "#" and "?" (they end the path), '"<>`{} (browsers always encode them).
_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+;=:@/%\[\]|^]*")
_QUERY = re.compile(r"[\x21-\x22\x24-\x7e]*")  # visible ASCII except "#"
_ESCAPE = re.compile(r"%(.{0,2})", re.DOTALL)
_HEX = frozenset(string.hexdigits)
_REFUSED_ESCAPES = frozenset({"2F", "5C", "25", "7F", *(f"{i:02X}" for i in range(0x20))})
_HOST = re.compile(
    r"(?P<name>[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?\.?|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?", re.ASCII
)
_METHOD = re.compile(r"[A-Z][A-Z_-]{0,31}")


def _memoised(longest: int) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
    """Remember a pure function's answers for texts up to ``longest`` characters.

    Every forward-auth request asks about the same few hosts and paths; a text an attacker makes
    long to fill the memory is answered without being remembered.
    """

    def wrap(function: Callable[[str], T]) -> Callable[[str], T]:
        cached = functools.lru_cache(maxsize=4096)(function)

        @functools.wraps(function)
        def answer(text: str) -> T:
            return cached(text) if len(text) <= longest else function(text)

        return answer

    return wrap


@_memoised(longest=300)  # a DNS name has at most 253 characters, and a port 6
def hostname(host: str) -> str | None:
    """The host's name as DNS compares it (lower case, no trailing dot, no port), or ``None``."""
    if not host.isascii():  # before lower(): the Kelvin sign (U+212A) lower-cases to an ASCII "k"
        return None
    match = _HOST.fullmatch(host.lower())
    if match is None or ".." in match["name"]:
        return None
    return match["name"].rstrip(".")


def method(text: str) -> str | None:
    """An HTTP method token (upper case, as every proxy sends it), or ``None``."""
    return text if _METHOD.fullmatch(text) else None


def uri(text: str) -> str | None:
    """A request target in origin form (``/path?query``) that every reading agrees on, or ``None``."""
    path, mark, query = text.partition("?")
    if not _usable_path(path) or (mark and not _QUERY.fullmatch(query)):
        return None
    return text


# The path only: a query changes from link to link (and may carry a token: not kept in memory).
@_memoised(longest=512)
def _usable_path(path: str) -> bool:
    return _PATH.fullmatch(path) is not None and decode_unreserved(path) is not None


def decode_unreserved(path: str) -> str | None:
    """Decode ``%XX`` of unreserved characters, upper-case the rest; ``None`` for a refused escape."""
    if "%" not in path:
        return path
    refused = False

    def one(match: re.Match[str]) -> str:
        nonlocal refused
        hex_ = match[1].upper()
        if len(hex_) != 2 or not _HEX.issuperset(hex_) or hex_ in _REFUSED_ESCAPES:  # noqa: PLR2004
            refused = True
            return ""
        char = chr(int(hex_, 16))
        return char if char in _UNRESERVED else f"%{hex_}"

    decoded = _ESCAPE.sub(one, path)
    return None if refused else decoded


def resolve(path: str) -> str:
    """Merge repeated slashes and resolve ``.`` and ``..`` segments (never above the root)."""
    segments = path.split("/")[1:]
    out: list[str] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment == "..":
            if out:
                out.pop()
        elif segment not in (".", ""):
            out.append(segment)
            continue
        if i == last:  # "/a/b/.." and "/a/" keep their trailing slash
            out.append("")
    return "/" + "/".join(out)


def readings(path: str) -> frozenset[str]:
    """The readings of a path ``uri`` accepted (see the module docstring); one when all agree."""
    if "%" not in path and "//" not in path and "/." not in path and ";" not in path:
        return frozenset((path,))  # the usual path: nothing to decode, merge or resolve
    decoded = decode_unreserved(path) or path
    canonical = resolve(decoded)
    without_parameters = (
        resolve("/".join(s.split(";", 1)[0] for s in decoded.split("/"))) if ";" in decoded else canonical
    )
    return frozenset((path, decoded, canonical, without_parameters))
