"""The gateway's exceptions.

Expected outcomes (a forged, unknown or expired token) are values, not exceptions: see
``sessions.Reason``. Exceptions are for failures::

    GatewayError
    ├── ConfigError(GatewayError, ValueError)   the settings are missing or invalid
    └── BackendUnavailable                      a backend could not answer in time
        ├── StoreUnavailable                    the session source (Postgres) could not answer
        │   └── SchemaMismatch                  Postgres answers, but Better Auth's tables aren't as mapped
        └── CacheUnavailable                    the shared cache (Redis) could not answer: degrade, never 503
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError, ValueError):
    """The configuration is invalid; ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class BackendUnavailable(GatewayError):
    """A backend could not be reached or did not answer within its budget."""


class StoreUnavailable(BackendUnavailable):
    """Postgres could not answer: without a cached answer the verdict is 503, never 401."""


class SchemaMismatch(StoreUnavailable):
    """The mapped tables or columns are not there: a configuration problem, not an outage."""


class CacheUnavailable(BackendUnavailable):
    """The shared cache could not answer: lookups go on to the session source, readiness degrades."""
