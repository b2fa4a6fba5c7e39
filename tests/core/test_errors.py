"""The exception tree: what each error is, so that the policies catching them catch the right ones."""

from __future__ import annotations

import pytest

from gateway.core.errors import (
    BackendUnavailable,
    CacheUnavailable,
    ConfigError,
    GatewayError,
    SchemaMismatch,
    StoreUnavailable,
)


def test_the_tree() -> None:
    """Configuration errors are ValueErrors; a cache outage is a backend outage but never a store outage."""
    assert issubclass(ConfigError, GatewayError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(BackendUnavailable, GatewayError)
    assert issubclass(StoreUnavailable, BackendUnavailable)
    assert issubclass(SchemaMismatch, StoreUnavailable)
    assert issubclass(CacheUnavailable, BackendUnavailable)
    assert not issubclass(CacheUnavailable, StoreUnavailable)  # a cache outage never fails a request
    assert not issubclass(BackendUnavailable, ValueError)


def test_a_config_error_lists_every_problem() -> None:
    """ConfigError keeps each problem and says them all, one a line."""
    error = ConfigError(["GATEWAY_A is missing", "GATEWAY_B: not a number"])
    assert error.problems == ["GATEWAY_A is missing", "GATEWAY_B: not a number"]
    assert str(error) == "GATEWAY_A is missing\nGATEWAY_B: not a number"
    with pytest.raises(ValueError, match="GATEWAY_B"):
        raise error


def test_a_schema_mismatch_is_caught_as_the_store_being_unavailable() -> None:
    """Where the policy catches StoreUnavailable (a 503), a schema mismatch is caught too."""
    with pytest.raises(StoreUnavailable):
        raise SchemaMismatch("no such column")
