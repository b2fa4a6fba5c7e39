"""The API key settings' problems (``GATEWAY_API_KEY*``), checked with the rest by ``checks.validate``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config.settings import Settings

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]{1,64}$")  # an HTTP field name (RFC 9110 token), lower case
# Credentials the gateway reads already: a key read from one would be judged twice over.
_TAKEN = frozenset({"authorization", "cookie", "x-session-token"})


def api_key_problems(s: Settings) -> list[str]:
    """Every problem of the API key settings (none while ``GATEWAY_API_KEYS=off``, whatever they say)."""
    if s.api_keys != "on":
        return []
    problems = []
    if s.secondary_storage_url is not None:
        problems.append("GATEWAY_API_KEYS: needs Postgres (the plugin's apikey table); not with secondary storage")
    if not s.api_key_headers:
        problems.append("GATEWAY_API_KEY_HEADERS: name at least one header (the plugin's apiKeyHeaders: x-api-key)")
    problems.extend(
        f"GATEWAY_API_KEY_HEADERS: {name!r} is not a header name the gateway may read keys from"
        for name in s.api_key_headers
        if not _HEADER_NAME.match(name) or name in _TAKEN
    )
    names = {"GATEWAY_API_KEY_TABLE": s.api_key_table} | {
        f"GATEWAY_API_KEY_FIELDS[{k}]": v for k, v in s.api_key_fields.items()
    }
    problems.extend(
        f"{var}: {value!r} is not a valid SQL identifier (letters, digits, _ and $; at most 63)"
        for var, value in names.items()
        if value and not _IDENTIFIER.match(value)
    )
    if s.api_key_min_length < 1:
        problems.append("GATEWAY_API_KEY_MIN_LENGTH: at least 1 (the plugin's defaultKeyLength, 64 by default)")
    if s.api_key_max_length < max(s.api_key_min_length, 1) or s.api_key_max_length > s.max_header_bytes:
        problems.append(
            "GATEWAY_API_KEY_MAX_LENGTH: at least GATEWAY_API_KEY_MIN_LENGTH, at most GATEWAY_MAX_HEADER_BYTES"
        )
    if s.api_key_session_expires_in <= 0:
        problems.append("GATEWAY_API_KEY_SESSION_EXPIRES_IN: Better Auth's session.expiresIn, above 0")
    return problems
