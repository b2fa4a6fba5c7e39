"""What the settings look like to a person: secrets masked, for logs and ``gateway check-config``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus, urlsplit

import msgspec

if TYPE_CHECKING:
    from gateway.config.settings import Settings


def url_origin(url: str) -> str:
    """``new URL(url).origin``: scheme and host lowercased, a default port dropped; ``""`` if unreadable."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return ""
    host = f"[{host}]" if ":" in host else host
    default = 80 if scheme == "http" else 443
    return f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def describe(s: Settings) -> dict[str, object]:
    """Return the effective settings with every secret masked, for logs and ``check-config``."""
    out = msgspec.structs.asdict(s)
    for name in ("database_url", "read_database_url", "listen_database_url"):
        url = getattr(s, name)
        out[name] = mask_dsn(url.reveal()) if url else None
    out["redis_url"] = mask_dsn(s.redis_url.reveal()) if s.redis_url else None
    secondary = s.secondary_storage_url
    out["secondary_storage_url"] = mask_dsn(secondary.reveal()) if secondary else None
    out["secrets"] = [f"<{len(x)} chars>" for x in s.secrets]
    # Plain values, so that the JSON log line can carry them too.
    out["trusted_proxies"] = [str(net) for net in s.trusted_proxies]
    out["rate_limit_exempt"] = [str(net) for net in s.rate_limit_exempt]
    out["redirect_hosts"] = list(s.redirect_hosts)
    out["returned_fields"] = {"user": sorted(s.returned_fields.user), "session": sorted(s.returned_fields.session)}
    out["session_cookie_read"] = s.cookie_names[0]  # the one name, as secure_cookies and base_url decide
    return out


def cookie_note(s: Settings) -> str | None:
    """What ``check-config`` says when the cookie name was chosen without a base URL to follow."""
    if s.secure_cookies != "auto" or s.base_url:
        return None
    return (
        f"reading the cookie {s.cookie_names[0]} only: no base URL is set (GATEWAY_BASE_URL or BETTER_AUTH_URL), "
        "so the __Secure- name Better Auth uses in production is assumed; for a Better Auth served over "
        "http, set its base URL or GATEWAY_SECURE_COOKIES=false"
    )


# Query parameters of a DSN that may hold a secret: libpq's password and sslpassword,
# redis-py's password and sentinel_password, and anything else named like a credential.
_SECRET_PARAM = re.compile(r"pass|secret|token|key|auth|cred", re.IGNORECASE)
_MASK = "****"


def mask_dsn(url: str) -> str:
    """``url`` with its userinfo password and every secret-looking query parameter masked.

    Anything that can't be split unambiguously is hidden whole: a DSN is printed only to help,
    never at the price of a password.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK
    if "@" in url.partition("://")[2] and "@" not in parts.netloc:
        # A password holding an unencoded "/", "?" or "#" ends the netloc early: where the
        # password ends can't be told, so nothing after the scheme is shown.
        return f"{parts.scheme}://{_MASK}"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":" + _MASK
    params = [_mask_param(p) for p in parts.query.split("&")] if parts.query else []
    query = "?" + "&".join(params) if parts.query else ""
    return f"{parts.scheme}://{userinfo}{at}{hosts}{parts.path}{query}" + ("#" + _MASK if parts.fragment else "")


def _mask_param(param: str) -> str:
    name, eq, _ = param.partition("=")
    # Names are matched decoded (asyncpg and redis-py decode them): "pass%77ord" is "password".
    return name + eq + _MASK if _SECRET_PARAM.search(unquote_plus(name)) else param
