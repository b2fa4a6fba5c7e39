"""The API key settings: read from the environment, each problem named with its variable."""

from __future__ import annotations

import pytest

from gateway.config import load_settings
from gateway.core.errors import ConfigError
from gateway.postgres.schema import mapping_from

BASE = {"DATABASE_URL": "postgresql://gw@db/app", "BETTER_AUTH_SECRET": "s" * 32}


def test_off_by_default_and_read_when_on() -> None:
    assert load_settings(BASE).api_keys == "off"
    assert mapping_from(load_settings(BASE)).api_key is None
    on = load_settings(BASE | {"GATEWAY_API_KEYS": "on", "GATEWAY_API_KEY_HEADERS": "X-Api-Key, X-Service-Key"})
    assert on.api_key_headers == ("x-api-key", "x-service-key")
    table = mapping_from(on).api_key
    assert table is not None
    assert (table.name, table.column("referenceId")) == ('"apikey"', "referenceId")
    drizzle = load_settings(
        BASE | {"GATEWAY_API_KEYS": "on", "GATEWAY_SCHEMA_PRESET": "drizzle", "GATEWAY_USE_PLURAL": "true"}
    )
    table = mapping_from(drizzle).api_key
    assert table is not None
    assert (table.name, table.column("referenceId")) == ('"apikeys"', "reference_id")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"GATEWAY_API_KEY_HEADERS": "authorization"}, "GATEWAY_API_KEY_HEADERS"),
        ({"GATEWAY_API_KEY_HEADERS": "x api key"}, "GATEWAY_API_KEY_HEADERS"),
        ({"GATEWAY_API_KEY_HEADERS": ""}, "GATEWAY_API_KEY_HEADERS"),
        ({"GATEWAY_API_KEY_TABLE": 'api"key'}, "GATEWAY_API_KEY_TABLE"),
        ({"GATEWAY_API_KEY_FIELDS": "key=k;drop"}, "GATEWAY_API_KEY_FIELDS[key]"),
        ({"GATEWAY_API_KEY_MIN_LENGTH": "0"}, "GATEWAY_API_KEY_MIN_LENGTH"),
        ({"GATEWAY_API_KEY_MAX_LENGTH": "10"}, "GATEWAY_API_KEY_MAX_LENGTH"),
        ({"GATEWAY_API_KEY_SESSION_EXPIRES_IN": "0"}, "GATEWAY_API_KEY_SESSION_EXPIRES_IN"),
        ({"GATEWAY_SECONDARY_STORAGE_URL": "redis://r/0"}, "GATEWAY_API_KEYS"),
    ],
)
def test_each_problem_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(BASE | {"GATEWAY_API_KEYS": "on"} | env)
    assert any(p.startswith(variable + ":") for p in raised.value.problems), raised.value.problems
    load_settings(BASE | {k: v for k, v in env.items() if k != "GATEWAY_SECONDARY_STORAGE_URL"})  # off: not checked
