"""The client's optional cache: positive answers only, for its TTL and never past the session's expiry, bounded."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from better_auth_gateway_client import Identity, Session, User
from better_auth_gateway_client.cache import IdentityCache

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def identity(user: str = "u", expires_in_s: float = 3600) -> Identity:
    session = Session(id="s-" + user, user_id=user, expires_at=NOW + dt.timedelta(seconds=expires_in_s))
    return Identity(User(id=user), session)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def cache(ttl_s: float = 10, size: int = 100) -> tuple[IdentityCache, Clock]:
    clock = Clock()
    return IdentityCache(ttl_s, size, clock=clock, now=lambda: NOW + dt.timedelta(seconds=clock.t - 100)), clock


def test_kept_for_the_ttl() -> None:
    """An identity is served until ttl_s has passed, then asked again."""
    c, clock = cache()
    c.put("k", identity())
    clock.t += 9.99
    assert c.get("k") == identity()
    clock.t += 0.01
    assert c.get("k") is None
    assert len(c) == 0


def test_never_past_the_sessions_expiry() -> None:
    """A session expiring within the TTL is kept only until it expires; an expired one is not kept at all."""
    c, clock = cache(ttl_s=60)
    c.put("soon", identity(expires_in_s=5))
    c.put("gone", identity(expires_in_s=-1))
    assert c.get("gone") is None
    clock.t += 4.9
    assert c.get("soon") is not None
    clock.t += 0.1
    assert c.get("soon") is None


def test_a_jwt_identity_is_kept_for_the_ttl() -> None:
    """An identity without a session (a JWT's) is kept for the TTL alone."""
    c, clock = cache()
    c.put("jwt", Identity(User(id="u"), None))
    clock.t += 9
    assert c.get("jwt") is not None


def test_bounded_least_recently_used_out_first() -> None:
    """Past ``size`` entries the least recently used goes; a read counts as a use."""
    c, _ = cache(size=2)
    c.put("a", identity("a"))
    c.put("b", identity("b"))
    assert c.get("a") is not None
    c.put("c", identity("c"))
    assert c.get("b") is None
    assert c.get("a") is not None
    assert c.get("c") is not None
    assert len(c) == 2


def test_off_and_bad_settings() -> None:
    """ttl_s 0 keeps nothing; a negative TTL or a size under 1 is refused."""
    c = IdentityCache(0, 10)
    assert not c.enabled
    c.put("k", identity())
    assert c.get("k") is None
    with pytest.raises(ValueError, match="ttl_s"):
        IdentityCache(-1, 10)
    with pytest.raises(ValueError, match="size"):
        IdentityCache(1, 0)


def test_shared_by_threads() -> None:
    """Threads putting and getting at once leave it consistent and within its bound."""
    c, _ = cache(size=50)

    def work(n: int) -> None:
        for i in range(2000):
            key = f"{n}-{i % 80}"
            c.put(key, identity(key))
            c.get(f"{n}-{(i * 7) % 80}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(c) == 50
