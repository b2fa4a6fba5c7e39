"""Credential stripping's headers for the upstream, read from the request as the gateway reads it."""

from __future__ import annotations

from gateway.config import load_settings
from gateway.http.stripping import Stripper
from tests.support.credentials import SECRET


class _Headers:
    """Headers as granian gives them (``tokens.Headers``): one value per name here."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def get(self, name: str, /) -> str | None:
        return self._values.get(name)

    def get_all(self, name: str, /) -> list[str]:
        value = self._values.get(name)
        return [] if value is None else [value]

    def keys(self) -> list[str]:
        return list(self._values)


def _stripper(env: dict[str, str]) -> Stripper:
    return Stripper(load_settings({"BETTER_AUTH_SECRET": SECRET, **env}, need=frozenset({"secret"})))


def test_every_credential_header_is_sent_empty_or_without_the_credential() -> None:
    request = _Headers(
        {
            "cookie": "theme=dark; better-auth.session_token=t.s; better-auth.session_data=x",
            "authorization": "Bearer t.s",
            "x-session-token": "t",
            "x-api-key": "k" * 64,
        }
    )
    headers = dict(_stripper({}).headers(request))
    assert headers == {"cookie": "theme=dark", "authorization": "", "x-session-token": ""}


def test_api_key_headers_are_sent_empty_when_keys_are_on() -> None:
    """An API key is a credential too: with GATEWAY_API_KEYS=on its headers never reach the upstream."""
    stripper = _stripper({"GATEWAY_API_KEYS": "on", "GATEWAY_API_KEY_HEADERS": "x-api-key,X-Other-Key,x-api-key"})
    headers = stripper.headers(_Headers({"x-api-key": "k" * 64, "authorization": "Basic abc"}))
    assert headers == [
        ("cookie", ""),
        ("authorization", "Basic abc"),  # another scheme is the app's own: kept
        ("x-session-token", ""),
        ("x-api-key", ""),
        ("x-other-key", ""),
    ]
