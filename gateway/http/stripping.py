"""Credential stripping (``GATEWAY_STRIP_CREDENTIALS``): what the upstream gets instead of the credentials.

On a 200 the gateway answers the request's ``Cookie`` without any cookie it reads, nor the other
form of its name (the session cookie, ``__Secure-`` or not, or ``GATEWAY_SESSION_COOKIE_NAME``;
the cookie cache's ``session_data`` and its chunks; every other ``<prefix>.`` cookie of Better
Auth's), an empty
``Authorization`` in place of a bearer credential, an empty ``X-Session-Token`` and, with
``GATEWAY_API_KEYS=on``, an empty value for each API key header; the proxy sets
them on the request to the upstream (``examples/`` shows how). A cookie's name is read as Better
Auth reads it (split at ``;``, trimmed like JavaScript's ``trim``), so a name the gateway would take
for a session cookie is never passed on under another reading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.credentials.tokens import JS_WHITESPACE, cookie_header

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.credentials.tokens import Headers


class Stripper:
    """Builds the credential-free ``Cookie``, ``Authorization``, ``X-Session-Token``, key headers for the upstream."""

    __slots__ = ("_blank", "_names", "_prefixes")

    def __init__(self, settings: Settings) -> None:
        # Both forms of each name: the gateway reads one (as Better Auth does), the upstream gets neither.
        names = (n.removeprefix("__Secure-") for n in (*settings.cookie_names, *settings.data_cookie_names))
        self._names = frozenset(form for n in names for form in (n, "__Secure-" + n))
        # Every other cookie of Better Auth's (dont_remember, session_data chunks "<name>.0", ...).
        self._prefixes = tuple(f"{p}{settings.cookie_prefix}." for p in ("", "__Secure-")) + tuple(
            f"{name}." for name in self._names
        )
        # Headers that only ever carry a credential: sent empty (an API key is a credential too).
        keys = settings.api_key_headers if settings.api_keys == "on" else ()
        self._blank = [("x-session-token", ""), *((name, "") for name in dict.fromkeys(keys))]

    def headers(self, request: Headers) -> list[tuple[str, str]]:
        """The headers a 200 carries for the proxy to set on the upstream request."""
        authorization = request.get("authorization") or ""
        # Another scheme (Basic for the app itself) is no credential of the gateway's: it stays.
        kept = "" if authorization.lstrip(JS_WHITESPACE)[:7].lower() == "bearer " else authorization
        # Every Cookie field, as the credential was read from them all (tokens.cookie_header).
        cookie = self.cookie(cookie_header(request) or "")
        return [("cookie", cookie), ("authorization", kept), *self._blank]

    def cookie(self, cookie: str) -> str:
        """The Cookie header without any cookie the gateway reads."""
        parts = (p.strip(JS_WHITESPACE) for p in cookie.split(";"))
        return "; ".join(p for p in parts if p and not self._credential(p.split("=", 1)[0].strip(JS_WHITESPACE)))

    def _credential(self, name: str) -> bool:
        return name in self._names or name.startswith(self._prefixes)
