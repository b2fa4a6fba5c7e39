"""The memory of revoked tokens and users: what it trusts, for how long, and what happens when it overflows."""

from __future__ import annotations

from gateway.credentials.tokens import token_hash
from gateway.lookup.revocations import Revocations, user_name
from tests.support.memory import Clock

VICTIM, BYSTANDER = token_hash("victim"), token_hash("bystander")


def test_a_revoked_token_or_user_is_distrusted_for_revoked_for_s_then_trusted() -> None:
    """A token hash or user heard revoked is 'lately' revoked for exactly revoked_for_s; others never are."""
    clock = Clock()
    memory = Revocations(clock, revoked_for_s=10)
    memory.token(VICTIM)
    memory.user("banned")
    assert memory.lately(VICTIM, "anyone")
    assert memory.lately(BYSTANDER, "banned")
    assert not memory.lately(BYSTANDER, "anyone")
    clock.advance(10)
    assert memory.lately(VICTIM, "anyone")  # the deadline itself still counts
    clock.advance(0.001)
    assert not memory.lately(VICTIM, "anyone")
    assert not memory.lately(BYSTANDER, "banned")


def test_token_lately_is_lately_for_the_token_alone() -> None:
    """Asked before the user is known: the token heard revoked, for revoked_for_s; not a user's revocation."""
    clock = Clock()
    memory = Revocations(clock, revoked_for_s=10)
    memory.token(VICTIM)
    memory.user("banned")
    assert memory.token_lately(VICTIM)
    assert not memory.token_lately(BYSTANDER)
    clock.advance(10.001)
    assert not memory.token_lately(VICTIM)


def test_token_lately_answers_yes_for_every_token_while_a_dropped_revocation_is_in_force() -> None:
    """An overflowing memory may have dropped any token: every one is 'lately' until the dropped entry lapses."""
    clock = Clock()
    memory = Revocations(clock, revoked_for_s=60, max_entries=2)
    for name in ("a", "b", "c"):
        memory.token(token_hash(name))
    assert memory.token_lately(BYSTANDER)
    clock.advance(60.001)
    assert not memory.token_lately(BYSTANDER)


def test_invalidations_count_every_revocation_and_flush() -> None:
    """The local invalidation count moves by one per revocation or flush heard."""
    memory = Revocations(Clock(), revoked_for_s=10)
    memory.token(VICTIM)
    memory.user("u1")
    memory.flush()
    assert memory.invalidations == 3


def test_stale_only_for_what_concerns_the_lookup() -> None:
    """A lookup is stale after a revocation of its token, of its user, or a flush; not after others'."""
    memory = Revocations(Clock(), revoked_for_s=10)
    since = memory.invalidations
    assert not memory.stale(since, VICTIM, "u1")  # nothing heard
    memory.token(BYSTANDER)
    memory.user("someone else")
    assert not memory.stale(since, VICTIM, "u1")
    assert not memory.stale(since, VICTIM, None)
    memory.user("u1")
    assert memory.stale(since, VICTIM, "u1")
    assert not memory.stale(since, VICTIM, None)  # the user is not known yet: not this one's
    assert not memory.stale(memory.invalidations, VICTIM, "u1")  # a lookup begun after it
    since = memory.invalidations
    memory.token(VICTIM)
    assert memory.stale(since, VICTIM, None)
    since = memory.invalidations
    memory.flush()
    assert memory.stale(since, BYSTANDER, "anyone")


def test_a_revocation_heard_again_is_dated_by_the_latest() -> None:
    """A revocation heard twice counts from the second time: a lookup begun between the two is stale."""
    memory = Revocations(Clock(), revoked_for_s=10)
    memory.token(VICTIM)
    since = memory.invalidations
    memory.token(VICTIM)
    assert memory.stale(since, VICTIM, None)


def test_a_revocation_pushed_out_of_memory_makes_every_redis_value_untrusted() -> None:
    """Red team 13, finding 2: one revocation in force too many distrusts every token until the dropped one lapses.

    The memory used to drop its oldest entry silently, and with it the only thing refusing a
    replayed shared-cache value once the tombstone had lapsed.
    """
    clock = Clock()
    memory = Revocations(clock, revoked_for_s=60, max_entries=100)
    memory.token(VICTIM)
    clock.advance(10)
    for i in range(100):
        memory.token(token_hash(f"forged{i}"))
    assert len(memory) == 100
    assert memory.lately(VICTIM, "u1")  # pushed out, still in force: everything is suspect
    assert memory.lately(BYSTANDER, "u2")
    clock.advance(50.5)  # the victim's revocation has lapsed: trusted again
    assert not memory.lately(BYSTANDER, "u2")
    assert memory.lately(token_hash("forged99"), "u2")  # the ones still held still count
    clock.advance(61)  # pushing out lapsed entries forgets nothing in force
    for i in range(100):
        memory.user(f"forged{i}")
    assert not memory.lately(BYSTANDER, "u2")
    memory.user("one too many")  # but one more pushes out one in force
    assert memory.lately(BYSTANDER, "u2")


def test_a_lookup_begun_before_a_dropped_revocation_is_stale_whatever_its_token() -> None:
    """Once the memory drops a revocation, every lookup begun before it was heard is stale (its subject is unknown)."""
    clock = Clock()
    memory = Revocations(clock, revoked_for_s=60, max_entries=2)
    since = memory.invalidations
    memory.token(VICTIM)
    later = memory.invalidations
    memory.token(token_hash("a"))
    assert not memory.stale(since, BYSTANDER, "u2")
    memory.token(token_hash("b"))  # pushes the victim out
    assert memory.stale(since, BYSTANDER, "u2")
    assert not memory.stale(later, BYSTANDER, "u2")  # begun after it: the memory still decides


def test_a_long_user_id_is_remembered_revoked_by_its_hash() -> None:
    """A user id of 8,000 bytes (what anyone's NOTIFY can send) is remembered in 67 characters and still counts."""
    memory = Revocations(Clock(), revoked_for_s=10)
    long_id = "x" * 7998
    memory.user(long_id)
    assert memory.lately(VICTIM, long_id)
    assert not memory.lately(VICTIM, long_id[:-1])
    assert not memory.lately(VICTIM, "x" * 64)
    assert len(user_name(long_id)) == len("u:#") + 64
    assert user_name("x" * 64) == "u:" + "x" * 64
    assert max(len(name) for name in memory._memory._data) == len("u:#") + 64
