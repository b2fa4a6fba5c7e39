"""The secret the tests sign with, and the credentials a client presents: one builder for each form.

- ``cookie(token)``: the Cookie header of a browser signed in by Better Auth (HTTP tests);
- ``cookie_pair(token)``: the same ``name=value`` pair alone, for raw requests and proxies;
- ``cred(token)``: a parsed credential, for the decision core called in-process.
"""

from __future__ import annotations

from urllib.parse import quote

from gateway.credentials.tokens import Credential, header_credential, sign

SECRET = "test-secret-0123456789abcdefghijklmnopqrstuvwxyz"
"""``BETTER_AUTH_SECRET`` of every gateway and Better Auth the tests start."""
SESSION_COOKIE = "better-auth.session_token"
"""Better Auth's session cookie on plain http (the tests' servers): no ``__Secure-`` prefix."""
BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
"""The standard base64 alphabet, in order: a character's index is the 6 bits it carries."""


def cookie_pair(token: str, name: str = SESSION_COOKIE, secret: str = SECRET) -> str:
    """``name=value`` as Better Auth sets it: the token signed with ``secret``, URI-encoded."""
    return f"{name}={quote(sign(token, secret), safe='')}"


def cookie(
    token: str, name: str = SESSION_COOKIE, secret: str = SECRET, *, among_others: bool = False
) -> dict[str, str]:
    """The Cookie header a browser sends after Better Auth's sign-in, as a headers dict.

    ``among_others`` puts the session cookie between two unrelated ones (``theme=dark; …; other=1``),
    as a browser does on a site with more cookies: the tests of the HTTP contract check that the
    gateway finds it there. Without it, the header holds the session cookie alone.
    """
    pair = cookie_pair(token, name, secret)
    return {"cookie": f"theme=dark; {pair}; other=1" if among_others else pair}


def cred(token: str, secret: str = SECRET) -> Credential:
    """The credential ``Decider.decide`` takes: ``token`` signed with ``secret``, as sent in a header."""
    return header_credential(sign(token, secret))
