"""The client's two exceptions: the gateway could not say. A missing or invalid session is no exception.

::

    GatewayUnavailable      down, unreachable, timed out, its database down, or not a gateway's answer
     └── RateLimited        the gateway's failure budget for this caller is spent (HTTP 429)

A service answers 503 for either, never 401: a 401 tells front ends the user is signed out.
"""

from __future__ import annotations


class GatewayUnavailable(Exception):
    """The gateway could not answer (down, overloaded, or its database is): answer 503, not 401.

    ``retry_after`` is the gateway's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(GatewayUnavailable):
    """The gateway could not check this credential in time: this caller's lookups found no session too often.

    The credential was not judged (it may be valid): try again after ``retry_after``. The gateway
    counts failures per client address, and a service is one address for all its users: list the
    service's addresses in ``GATEWAY_RATE_LIMIT_EXEMPT`` (README, "From Python services").
    """
