"""The decision over in-memory ports: every Reason, the failure budget's turn, the cookie cache, respellings.

Verdicts are checked by reason and session only: what else a verdict carries belongs to its callers.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hmac
import json
import time
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.core.sessions import Reason, Session
from gateway.credentials.cookie_cache import CookieCache
from gateway.credentials.jwts import JwtVerifier
from gateway.credentials.tokens import Verifier, cookie_credential, find_credential, header_credential, sign, token_hash
from gateway.lookup.decision import RECHECK_MAX, Decider, judge
from gateway.lookup.tiers import Tiers
from tests.support.memory import Clock, MemorySource, session

if TYPE_CHECKING:
    from gateway.core.sessions import Verdict
    from gateway.credentials.tokens import Credential

SECRET = "a-secret-long-enough-for-the-gateway-0123456789"
NAMES = ("better-auth.session_token",)
NOW = 1_800_000_000.0
TOKEN, BANNED, EXPIRED, RAW = "a" * 32, "b" * 32, "c" * 32, "r" * 32
AUDIENCE = "https://app.example"


def signed(token: str, secret: str = SECRET) -> Credential:
    return header_credential(sign(token, secret))


def bearer(value: str) -> Credential:
    found = find_credential(value, None, None, NAMES)
    assert found is not None
    return found


class Turn:
    """A failure budget's turn that records what it was asked."""

    def __init__(self, *, granted: bool = True) -> None:
        self.granted = granted
        self.taken: list[str | None] = []
        self.settled: list[bool] = []

    async def take(self, *, signed: str | None) -> bool:
        self.taken.append(signed)
        return self.granted

    def settle(self, *, spent: bool) -> None:
        self.settled.append(spent)


class World:
    """A decider over a memory source, no shared cache, and a clock the test moves."""

    def __init__(self, *, accept_unsigned: bool = False, cookie_cache: bool = False, jwts: JwtVerifier | None = None):
        self.clock = Clock(NOW)
        self.alice = session("alice", expires_at=NOW + 3600)
        self.source = MemorySource(
            {
                TOKEN: self.alice,
                RAW: self.alice,
                BANNED: session("mallory", expires_at=NOW + 3600, banned_until=NOW + 60),
                EXPIRED: session("bob", expires_at=NOW - 1),
            }
        )
        self.tiers = Tiers(
            self.source, None, max_entries=100, ttl_s=60, negative_max_entries=100, negative_ttl_s=5, clock=self.clock
        )
        cache = CookieCache("compact", (SECRET,), clock=self.clock) if cookie_cache else None
        self.decider = Decider(Verifier(SECRET, accept_unsigned=accept_unsigned), self.tiers, cache, jwts)

    async def decide(self, credential: Credential | None, **options: Any) -> Verdict:
        return await self.decider.decide(credential, **options)

    def count(self, *key: str) -> int:
        return self.tiers.metrics._counts[key]


# -- every Reason --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("credential", "reason"),
    [
        (None, Reason.no_credentials),
        (signed(TOKEN), Reason.ok),
        (signed("z" * 32), Reason.unknown_session),
        (signed(EXPIRED), Reason.expired),
        (signed(BANNED), Reason.banned),
        (signed(TOKEN, "another-secret-long-enough-for-the-gateway-000"), Reason.bad_signature),
        (header_credential(TOKEN + ".short"), Reason.malformed),
        (header_credential(RAW), Reason.unsigned_token),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_each_local_or_looked_up_outcome(credential: Credential | None, reason: Reason) -> None:
    """Each outcome a credential and the source can lead to, with the session only when allowed."""
    world = World()
    verdict = await world.decide(credential)
    assert verdict.reason is reason
    assert (verdict.session is world.alice) is (reason is Reason.ok)
    assert verdict.allowed is (reason is Reason.ok)


async def test_raw_tokens_when_accepted_and_implausible_ones() -> None:
    """With unsigned bearer tokens accepted, a raw token is looked up; one that can't be a token is malformed."""
    world = World(accept_unsigned=True)
    assert (await world.decide(header_credential(RAW))).reason is Reason.ok
    assert (await world.decide(header_credential("not a token"))).reason is Reason.malformed
    assert world.source.calls == [[RAW]]


async def test_backend_unavailable_is_not_remembered() -> None:
    """The source failing is backend_unavailable (a 503), never a 401, and is not cached as absent."""
    world = World()
    world.source.failing = True
    assert (await world.decide(signed(TOKEN))).reason is Reason.backend_unavailable
    world.source.failing = False
    assert (await world.decide(signed(TOKEN))).reason is Reason.ok


async def test_the_cache_answers_hits_and_known_absences_without_lookups() -> None:
    """An allowed credential is answered from the LRU; unknown and expired from the negative cache; a ban never."""
    world = World()
    for credential in (signed(TOKEN), signed("z" * 32), signed(EXPIRED), signed(BANNED)):
        first = await world.decide(credential)
        assert (await world.decide(credential)).reason is first.reason
    assert world.source.queries == 4 + 1  # the banned one again: an unban must count at once
    assert world.count("l", "l1", "hit") == 1
    assert world.count("l", "l1", "negative") == 2


def test_judge_follows_better_auths_read_time_rules() -> None:
    """Valid until expiresAt (inclusive); banned while the ban runs; unknown without a session."""
    alice = session("alice", expires_at=NOW)
    assert judge(None, NOW) is Reason.unknown_session
    assert judge(alice, NOW) is Reason.ok
    assert judge(alice, NOW + 0.001) is Reason.expired
    banned = session("m", expires_at=NOW + 10, banned_until=NOW + 1)
    assert judge(banned, NOW) is Reason.banned
    assert judge(banned, NOW + 1) is Reason.ok


# -- the failure budget's turn -------------------------------------------------------------------


async def test_a_lookup_takes_a_turn_and_settles_it() -> None:
    """A signed credential waits with its token's hash; spent only when no valid session was found."""
    world = World()
    turn = Turn()
    assert (await world.decide(signed(TOKEN), turn=turn)).reason is Reason.ok
    assert (await world.decide(signed("z" * 32), turn=turn)).reason is Reason.unknown_session
    world.source.failing = True
    assert (await world.decide(signed(EXPIRED), turn=turn)).reason is Reason.backend_unavailable
    assert turn.taken == [token_hash(TOKEN), token_hash("z" * 32), token_hash(EXPIRED)]
    assert turn.settled == [False, True, False]  # an outage is not the address's doing


async def test_a_raw_token_waits_without_a_hash() -> None:
    """A raw bearer token proves nothing by a signature: it waits as unsigned (None)."""
    world = World(accept_unsigned=True)
    turn = Turn()
    await world.decide(bearer("Bearer " + RAW), turn=turn)
    assert turn.taken == [None]


async def test_no_turn_is_taken_without_a_lookup() -> None:
    """Cached answers, local refusals and no credential never wait for a turn."""
    world = World()
    await world.decide(signed(TOKEN))
    await world.decide(signed("z" * 32))
    turn = Turn(granted=False)
    for credential in (signed(TOKEN), signed("z" * 32), signed(TOKEN, "x" * 40), None):
        assert (await world.decide(credential, turn=turn)).reason is not Reason.rate_limited
    assert turn.taken == []


async def test_no_turn_is_rate_limited_and_not_judged() -> None:
    """No turn in time: rate_limited, with no lookup made and nothing settled."""
    world = World()
    turn = Turn(granted=False)
    assert (await world.decide(signed(TOKEN), turn=turn)).reason is Reason.rate_limited
    assert world.source.calls == []
    assert turn.settled == []


async def test_joining_a_lookup_in_flight_needs_no_turn() -> None:
    """A lookup of a token already on its way costs nothing more: no turn is taken for it."""
    world = World()
    world.source.gate.close()
    first = asyncio.ensure_future(world.decide(signed(TOKEN)))
    await world.source.gate.arrived()
    turn = Turn(granted=False)
    second = asyncio.ensure_future(world.decide(signed(TOKEN), turn=turn))
    world.source.gate.open()
    assert [v.reason for v in await asyncio.gather(first, second)] == [Reason.ok, Reason.ok]
    assert turn.taken == []
    assert world.source.queries == 1


async def test_a_cancelled_lookup_still_settles_its_turn_as_spent() -> None:
    """A client gone mid-lookup settles its turn (spent: nothing is known of what it found)."""
    world = World()
    world.source.gate.close()
    turn = Turn()
    task = asyncio.ensure_future(world.decide(signed(TOKEN), turn=turn))
    await world.source.gate.arrived()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert turn.settled == [True]
    world.source.gate.open()


# -- the cookie cache ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(token: str, user_id: str = "alice", *, expires_at: float = NOW + 3600, banned: bool = False) -> str:
    """A compact ``session_data`` cookie as Better Auth writes it, vouching for ``token``'s session."""
    iso = dt.datetime.fromtimestamp(expires_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    user: dict[str, object] = {"id": user_id, "email": f"{user_id}@example.com"}
    if banned:
        user["banned"] = True
    payload = {
        "session": {"id": "s-" + user_id, "token": token, "userId": user_id, "expiresAt": iso},
        "user": user,
        "updatedAt": 1,
        "version": "1",
    }
    window = int((NOW + 300) * 1000)
    text = json.dumps(payload, separators=(",", ":"))
    signature = _b64(hmac.digest(SECRET.encode(), (text[:-1] + f',"expiresAt":{window}}}').encode(), "sha256"))
    return _b64(f'{{"session":{text},"expiresAt":{window},"signature":"{signature}"}}'.encode())


def with_cache(token: str, cached: str) -> Credential:
    credential = cookie_credential(f"{NAMES[0]}={sign(token, SECRET)}", NAMES)
    assert credential is not None
    return credential._replace(cached=cached)


async def test_a_cookie_cache_vouching_for_the_token_needs_no_lookup() -> None:
    """A valid session_data for the proved token is the answer, with no lookup, and is not cached in the LRU."""
    world = World(cookie_cache=True)
    verdict = await world.decide(with_cache("n" * 32, compact("n" * 32)))
    assert verdict.reason is Reason.ok
    assert verdict.session is not None
    assert verdict.session.user_id == "alice"
    assert world.source.calls == []
    assert len(world.tiers.l1) == 0
    assert world.count("l", "cookie_cache", "hit") == 1


async def test_a_cookie_cache_is_judged_like_a_lookup() -> None:
    """A banned user in the cookie cache is refused as banned, from the cookie."""
    world = World(cookie_cache=True)
    assert (await world.decide(with_cache("n" * 32, compact("n" * 32, banned=True)))).reason is Reason.banned
    assert world.source.calls == []


async def test_a_cookie_cache_counts_even_after_a_negative_answer() -> None:
    """Better Auth reads its cookie cache before its store: a known-absent key does not hide a valid cookie cache."""
    world = World(cookie_cache=True)
    plain = with_cache("n" * 32, "")._replace(cached=None)
    assert (await world.decide(plain)).reason is Reason.unknown_session
    assert (await world.decide(with_cache("n" * 32, compact("n" * 32)))).reason is Reason.ok


async def test_a_cookie_cache_of_a_token_or_user_heard_revoked_is_not_believed() -> None:
    """After a revocation of its token or its user, a cookie cache is a miss and the lookup decides."""
    world = World(cookie_cache=True)
    world.tiers.invalidate_token(token_hash("n" * 32))
    assert (await world.decide(with_cache("n" * 32, compact("n" * 32)))).reason is Reason.unknown_session
    world.tiers.invalidate_user("alice")
    assert (await world.decide(with_cache(TOKEN, compact(TOKEN)))).reason is Reason.ok  # from the source
    assert world.source.queries == 2
    assert world.count("l", "cookie_cache", "miss") == 2


async def test_a_cookie_cache_for_another_token_or_forged_is_a_miss() -> None:
    """A cookie cache naming another token, or not signed with the secret, vouches for nothing."""
    world = World(cookie_cache=True)
    assert (await world.decide(with_cache(TOKEN, compact("n" * 32)))).reason is Reason.ok  # looked up
    forged = compact("z" * 32)[:-2] + "AA"
    assert (await world.decide(with_cache("z" * 32, forged))).reason is Reason.unknown_session
    assert world.source.queries == 2


# -- rechecks after a revocation ------------------------------------------------------------------


async def test_a_revoked_entry_is_looked_up_again_at_once_and_then_refused_without_a_query() -> None:
    """A revocation evicts and rechecks at once: the session's next request is refused from the negative cache."""
    world = World()
    credential = signed(TOKEN)
    assert (await world.decide(credential)).reason is Reason.ok
    del world.source.sessions[TOKEN]
    world.tiers.invalidate_token(token_hash(TOKEN))
    await world.decider.settled()
    assert world.source.calls == [[TOKEN], [TOKEN]]  # the recheck, before any request
    assert (await world.decide(credential)).reason is Reason.unknown_session
    assert world.source.queries == 2
    assert world.count("e", "revocation_recheck") == 1


async def test_a_request_during_the_recheck_joins_it() -> None:
    """The session's next request, arriving while the recheck's query runs, waits for that query."""
    world = World()
    credential = signed(TOKEN)
    assert (await world.decide(credential)).reason is Reason.ok
    del world.source.sessions[TOKEN]
    world.source.gate.close()
    world.tiers.invalidate_token(token_hash(TOKEN))
    await asyncio.wait_for(world.source.gate.arrived(), 5)  # the recheck's query, with no request
    request = asyncio.ensure_future(world.decide(credential))
    await asyncio.sleep(0)
    world.source.gate.open()
    assert (await request).reason is Reason.unknown_session
    assert world.source.queries == 2


async def test_a_session_still_valid_after_its_notification_is_cached_again() -> None:
    """An ``UPDATE``'s notification, or a forged one, costs the recheck's query and never a refusal."""
    world = World()
    credential = signed(TOKEN)
    assert (await world.decide(credential)).reason is Reason.ok
    world.tiers.invalidate_token(token_hash(TOKEN))
    await world.decider.settled()
    assert world.source.queries == 2  # the recheck's, before any request
    assert (await world.decide(credential)).reason is Reason.ok
    assert world.source.queries == 2  # the request was a hit


async def test_a_revocation_during_the_recheck_keeps_its_answer_out_of_the_cache() -> None:
    """The recheck is dated like any lookup: a revocation heard while it ran makes its answer uncached."""
    world = World()
    credential = signed(TOKEN)
    assert (await world.decide(credential)).reason is Reason.ok
    world.source.gate.close()
    world.tiers.invalidate_token(token_hash(TOKEN))
    await asyncio.wait_for(world.source.gate.arrived(), 5)  # the recheck's query, with no request
    world.tiers.invalidate_user("alice")  # banned meanwhile, say: what the recheck read may be stale
    world.source.gate.open()
    await world.decider.settled()
    assert (await world.decide(credential)).reason is Reason.ok
    assert world.source.queries == 3  # asked again: the recheck's answer was not cached


async def test_one_revocation_rechecks_a_bounded_number_of_entries() -> None:
    """A user with more cached sessions than ``RECHECK_MAX``: that many are rechecked, the rest only evicted."""
    world = World()
    tokens = [f"{i:032d}" for i in range(RECHECK_MAX + 4)]
    world.source.sessions |= dict.fromkeys(tokens, world.alice)
    for token in tokens:
        assert (await world.decide(signed(token))).reason is Reason.ok
    world.source.calls.clear()
    world.tiers.invalidate_user("alice")
    await world.decider.settled()
    assert sum(len(call) for call in world.source.calls) == RECHECK_MAX
    assert len(world.tiers.l1) == RECHECK_MAX  # cached again; the rest wait for their next request


# -- respellings ---------------------------------------------------------------------------------


async def test_a_respelling_is_answered_from_its_home_spellings_entry() -> None:
    """``bearer``/``BEARER`` respell ``Bearer``: answered from the home key's entry, never cached themselves."""
    world = World()
    value = sign(TOKEN, SECRET)
    assert (await world.decide(bearer("Bearer " + value))).reason is Reason.ok
    for scheme in ("bearer ", "BEARER ", "bEaReR "):
        verdict = await world.decide(bearer(scheme + value))
        assert verdict.reason is Reason.ok
        assert verdict.session is world.alice
    assert world.source.queries == 1
    assert len(world.tiers.l1) == 1
    assert world.count("e", "respelled_hit") == 3


async def test_a_respelling_of_a_known_absent_token_is_absent_without_a_lookup() -> None:
    """A respelled unknown token is answered from its home key's negative entry."""
    world = World()
    value = sign("z" * 32, SECRET)
    assert (await world.decide(bearer("Bearer " + value))).reason is Reason.unknown_session
    assert (await world.decide(bearer("bearer " + value))).reason is Reason.unknown_session
    assert world.source.queries == 1
    assert len(world.tiers.negative) == 1


async def test_a_percent_encoded_respelling_shares_the_home_entry() -> None:
    """A cookie whose signature is percent-encoded differently is the same credential at home."""
    world = World()
    value = sign(TOKEN, SECRET).replace("=", "%3D")
    first = cookie_credential(f"{NAMES[0]}={value}", NAMES)
    respelled = cookie_credential(f"{NAMES[0]}={value.replace('%3D', '%3d')}", NAMES)
    assert first is not None
    assert respelled is not None
    assert first.key != respelled.key
    assert (await world.decide(first)).reason is Reason.ok
    assert (await world.decide(respelled)).reason is Reason.ok
    assert world.source.queries == 1


# -- JWTs of the JWT plugin ----------------------------------------------------------------------


def jwt_world(*, up: bool = True) -> tuple[World, ed25519.Ed25519PrivateKey]:
    key = ed25519.Ed25519PrivateKey.generate()
    public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key())) | {"kid": "k", "alg": "EdDSA"}

    async def keys() -> list[dict[str, Any]]:
        if not up:
            raise OSError("the key source is down")
        return [public]

    return World(jwts=JwtVerifier(keys, audience=AUDIENCE)), key


def a_jwt(key: ed25519.Ed25519PrivateKey, **changes: object) -> Credential:
    claims = {"sub": "alice", "aud": AUDIENCE, "exp": int(time.time()) + 60, "email": "alice@example.com"}
    return bearer("Bearer " + jwt.encode(claims | changes, key, "EdDSA", {"kid": "k"}))


async def test_jwts_only_where_allowed() -> None:
    """A valid JWT is ok where allowed (no lookup); elsewhere it is just a malformed bearer token."""
    world, key = jwt_world()
    verdict = await world.decide(a_jwt(key), allow_jwt=True)
    assert verdict.reason is Reason.ok
    assert isinstance(verdict.session, Session)
    assert verdict.session.user_id == "alice"
    assert (await world.decide(a_jwt(key))).reason is Reason.malformed
    assert world.source.calls == []
    assert world.count("l", "jwt", "hit") == 1


async def test_jwt_refusals_and_an_unreachable_key_source() -> None:
    """Wrong audience is invalid_jwt, another key's signature bad_signature; keys unreadable: backend_unavailable."""
    world, key = jwt_world()
    assert (await world.decide(a_jwt(key, aud="https://other.example"), allow_jwt=True)).reason is Reason.invalid_jwt
    other = ed25519.Ed25519PrivateKey.generate()
    assert (await world.decide(a_jwt(other), allow_jwt=True)).reason is Reason.bad_signature
    assert world.count("l", "jwt", "miss") == 2
    down, key = jwt_world(up=False)
    assert (await down.decide(a_jwt(key), allow_jwt=True)).reason is Reason.backend_unavailable
    assert down.count("l", "jwt", "error") == 1
