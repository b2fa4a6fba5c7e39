"""The sliding refresh's settings: every problem named, and the mode the gateway runs in."""

from __future__ import annotations

import pytest

from gateway.config import load_settings
from gateway.config.refresh import refresh_mode
from gateway.core.errors import ConfigError
from tests.support.credentials import SECRET

ENV = {"BETTER_AUTH_SECRET": SECRET, "DATABASE_URL": "postgresql://db/app"}


def test_defaults_are_better_auths_and_get_session_slides() -> None:
    """7 days, 1 day, get-session only, nothing disabled or deferred."""
    s = load_settings(ENV)
    assert (s.session_expires_in_s, s.session_update_age_s) == (604800, 86400)
    assert refresh_mode(s) == "get-session"
    assert not s.session_defer_refresh


def test_modes() -> None:
    """off and all as asked; off with disableSessionRefresh or sessions in secondary storage."""
    assert refresh_mode(load_settings(ENV | {"GATEWAY_SESSION_REFRESH": "all"})) == "all"
    assert refresh_mode(load_settings(ENV | {"GATEWAY_SESSION_REFRESH": "off"})) == "off"
    assert refresh_mode(load_settings(ENV | {"GATEWAY_SESSION_DISABLE_REFRESH": "true"})) == "off"
    secondary = {"BETTER_AUTH_SECRET": SECRET, "GATEWAY_SECONDARY_STORAGE_URL": "redis://r/0"}
    assert refresh_mode(load_settings(secondary, need=frozenset({"secret"}))) == "off"


def test_every_problem_named() -> None:
    """Out-of-range ages, a Domain that could end the attribute, an unknown mode: each named, all at once."""
    bad = {
        "GATEWAY_SESSION_EXPIRES_IN_S": "0",
        "GATEWAY_SESSION_UPDATE_AGE_S": "-1",
        "GATEWAY_COOKIE_DOMAIN": "example.com; HttpOnly",
        "GATEWAY_SESSION_REFRESH": "sometimes",
    }
    with pytest.raises(ConfigError) as raised:
        load_settings(ENV | bad)
    text = str(raised.value)
    for name in bad:
        assert name in text, name
    with pytest.raises(ConfigError, match="400 days"):
        load_settings(ENV | {"GATEWAY_SESSION_EXPIRES_IN_S": str(401 * 86400)})
