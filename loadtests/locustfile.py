"""Realistic traffic that checks every answer, and an admin revoking sessions in the middle of it.

Run by ``loadtests/run.sh``, which seeds the sessions (``LOADTEST_SEED``) and collects the reports
(``LOADTEST_OUT``). Four kinds of users, each behind its own client address (``X-Forwarded-For``
from a trusted proxy, as in production, so the gateway's per-client failure budget applies to
each as it would):

- **a browser** behind forward auth: ``/validate`` with its session cookie and the headers nginx
  sends; when its session is revoked it gets a 401 and signs in again (takes another session);
- **an internal service**: ``POST /v1/validate`` with ``Authorization: Bearer`` for the sessions
  of many users, checking the identity in the JSON;
- **an attacker**: garbage, forged signatures and guessed raw tokens; only refusals are right
  (401, or the failure budget's 403/429 once it is spent);
- **an admin** who signs sessions out (``DELETE … WHERE "token"``) and revokes all of a user's
  sessions (``DELETE … WHERE "userId"``) as Better Auth does, then probes each revoked session.

Every answer is checked: a valid session must be accepted with its own user's identity, and a
session revoked more than ``GRACE_S`` (100 ms) before a request began must be refused. Either
mistake is a failed request; the run exits non-zero on any.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import psycopg  # cooperates with gevent (psycopg >= 3.1.14), which locust runs on
from locust import FastHttpUser, between, constant, events, task

from gateway.config import load_settings
from gateway.credentials.tokens import sign
from gateway.postgres.seed import generate_id

if TYPE_CHECKING:
    from collections.abc import Callable

GRACE_S = 0.1
REVOKE_EVERY_S = float(os.environ.get("LOADTEST_REVOKE_EVERY_S", "0.5"))
# The admin stops revoking when this share of the seeded sessions is left, so that every user
# kind keeps traffic to check until the end of a long run.
KEEP_LIVE = 0.25


class Ledger:
    """What every simulated user shares: the sessions, which of them are revoked, and since when."""

    def __init__(self, seeded: dict[str, Any]) -> None:
        self.owner = {t: a["user_id"] for a in seeded["accounts"] for t in a["tokens"]}
        self.live = list(self.owner)
        self.revoked: dict[str, float] = {}  # token -> time.time() when the DELETE was committed
        # Tokens whose DELETE was sent but not yet seen committed: the commit lands somewhere in
        # between, and an answer may come back (and be checked) before the admin hears of it.
        self.revoking: set[str] = set()
        self.in_use: set[str] = set()  # sessions browsers hold now: the ones worth revoking
        self.counts = {"revocations": 0, "sessions_revoked": 0, "probes": 0, "refusals_seen": 0, "accepted_revoked": 0}
        self._lock = threading.Lock()
        self.total = len(self.live)

    def take(self) -> str:
        """A live session for a browser to hold."""
        token = random.choice(self.live)
        self.in_use.add(token)
        return token

    def drop(self, token: str) -> None:
        """A browser let go of a session."""
        self.in_use.discard(token)

    def revoke_soon(self, tokens: list[str]) -> None:
        """Record sessions whose DELETE is about to be sent."""
        with self._lock:
            self.revoking.update(tokens)

    def revoked_now(self, tokens: list[str], at: float) -> None:
        """Record sessions revoked at ``at``."""
        with self._lock:
            gone = set(tokens)
            self.live = [t for t in self.live if t not in gone]
            for token in tokens:
                self.revoked[token] = at
            self.revoking -= gone

    def check(self, response: Any, token: str, started: float, identity: Callable[[], object]) -> None:
        """Mark ``response`` failed or not: the right status for ``token``, and for a 200 its user's identity."""
        problem = self.verdict(token, started, response.status_code)
        if problem is None and response.status_code == 200 and identity() != self.owner[token]:
            problem = f"identity {identity()!r} is not the session's user"
        if problem:
            response.failure(problem)
        else:
            response.success()

    def verdict(self, token: str, started: float, status: int) -> str | None:
        """``None`` if ``status`` is right for ``token`` at ``started``, else what is wrong.

        A session revoked less than ``GRACE_S`` before the request (or during it) may go either way.
        """
        revoked_at = self.revoked.get(token)
        if revoked_at is None and token in self.revoking:  # its DELETE is in flight: either way
            return None if status in (200, 401) else f"unexpected {status}"
        if revoked_at is None:
            return None if status == 200 else f"valid session refused with {status}"
        lag = started - revoked_at
        if lag <= GRACE_S:
            return None if status in (200, 401) else f"unexpected {status}"
        if status == 200:
            self.counts["accepted_revoked"] += 1
            return f"session revoked {lag * 1000:.0f} ms before the request was accepted"
        if status == 401:
            self.counts["refusals_seen"] += 1
            return None
        return f"revoked session answered {status}, not 401"


LEDGER: Ledger | None = None
SECRET = ""
COOKIE = "better-auth.session_token"  # the one name the gateway reads, from its own settings


@events.init.add_listener
def _load(environment: Any, **_: Any) -> None:
    global LEDGER, SECRET, COOKIE  # noqa: PLW0603  (locust's users are classes: shared state lives at module level)
    LEDGER = Ledger(json.loads(Path(os.environ["LOADTEST_SEED"]).read_text()))
    settings = load_settings(need=frozenset({"secret"}))
    SECRET, COOKIE = settings.secret.reveal(), settings.cookie_names[0]
    del environment


@events.quitting.add_listener
def _report(environment: Any, **_: Any) -> None:
    assert LEDGER is not None
    summary = {**LEDGER.counts, "sessions": LEDGER.total, "grace_ms": GRACE_S * 1000}
    out = os.environ.get("LOADTEST_OUT")
    if out:
        Path(out, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if LEDGER.counts["accepted_revoked"]:
        environment.process_exit_code = 1


def ledger() -> Ledger:
    assert LEDGER is not None, "the init event has not run"
    return LEDGER


def client_address(network: int) -> str:
    """A client address of its own for each simulated user, in 10.<network>.0.0/16."""
    return f"10.{network}.{random.randrange(256)}.{random.randrange(1, 255)}"


def signed_cookie(token: str, secret: str) -> str:
    """The Cookie header Better Auth's sign-in leaves in a browser, with another site cookie."""
    return f"_ga=GA1.1.{random.randrange(10**9)}; {COOKIE}={quote(sign(token, secret), safe='')}"


class Browser(FastHttpUser):
    """A signed-in browser whose pages go through forward auth."""

    weight = 6
    wait_time = between(0.0, 0.02)

    def on_start(self) -> None:
        self.ip = client_address(1)
        self.token = ledger().take()

    @task
    def page(self) -> None:
        token, started = self.token, time.time()
        headers = {
            "cookie": signed_cookie(token, SECRET),
            "x-forwarded-for": self.ip,
            "x-original-url": f"https://app.example.com/dashboard/{random.randrange(100)}",
            "x-original-method": "GET",
            "accept": "text/html,application/xhtml+xml",
        }
        with self.client.get("/validate", headers=headers, name="browser /validate", catch_response=True) as r:
            ledger().check(r, token, started, lambda: r.headers.get("x-auth-request-user"))
        if r.status_code == 401:  # signed out: sign in again
            ledger().drop(token)
            self.token = ledger().take()


class InternalService(FastHttpUser):
    """A backend service asking about the bearer tokens of the requests it receives."""

    weight = 3
    wait_time = between(0.0, 0.02)

    def on_start(self) -> None:
        self.ip = client_address(2)

    @task
    def validate(self) -> None:
        token, started = random.choice(ledger().live), time.time()
        headers = {"authorization": f"Bearer {sign(token, SECRET)}", "x-forwarded-for": self.ip}
        with self.client.post("/v1/validate", headers=headers, name="service /v1/validate", catch_response=True) as r:
            ledger().check(r, token, started, lambda: (r.json().get("user") or {}).get("id"))


class Attacker(FastHttpUser):
    """Garbage, forged signatures and guessed tokens from one address: only refusals are right."""

    weight = 1
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.ip = client_address(3)

    @task(3)
    def forged_cookie(self) -> None:
        value = quote(sign(generate_id(), "not-the-secret-" + generate_id()), safe="")
        self._expect_refusal({"cookie": f"{COOKIE}={value}"}, "attacker forged cookie")

    @task(2)
    def garbage(self) -> None:
        junk = random.choice(["%", "a.b", "x" * 300, "\"'", generate_id(7) + ".===="])
        self._expect_refusal({"authorization": f"Bearer {junk}"}, "attacker garbage")

    @task(1)
    def guessed_token(self) -> None:
        self._expect_refusal({"authorization": f"Bearer {generate_id()}"}, "attacker guessed token")

    def _expect_refusal(self, headers: dict[str, str], name: str) -> None:
        headers["x-forwarded-for"] = self.ip
        with self.client.get("/validate", headers=headers, name=name, catch_response=True) as r:
            limited = r.status_code == 403 and r.headers.get("x-auth-error-status") == "429"
            if r.status_code == 401 or limited:
                r.success()
            else:
                r.failure(f"a forged or unknown credential got {r.status_code}")


class Admin(FastHttpUser):
    """Signs sessions out and revokes users' sessions mid-run, as Better Auth does, then probes them."""

    fixed_count = 1
    wait_time = constant(REVOKE_EVERY_S)

    def on_start(self) -> None:
        self.db = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)

    def on_stop(self) -> None:
        self.db.close()

    @task(3)
    def sign_out(self) -> None:
        # Not a session revoked already that a browser has yet to find out about: revoking it
        # again would move its revocation time later and excuse answers the checker must judge.
        held = [t for t in ledger().in_use if t not in ledger().revoked] or ledger().live
        if self._enough_left():
            token = random.choice(held)
            ledger().revoke_soon([token])
            self.db.execute('DELETE FROM "session" WHERE "token" = %s', (token,))
            self._revoked([token])

    @task(1)
    def revoke_user_sessions(self) -> None:
        if self._enough_left():
            user = ledger().owner[random.choice(ledger().live)]
            ledger().revoke_soon([t for t, owner in ledger().owner.items() if owner == user])
            rows = self.db.execute('DELETE FROM "session" WHERE "userId" = %s RETURNING "token"', (user,)).fetchall()
            self._revoked([row[0] for row in rows])

    def _enough_left(self) -> bool:
        return len(ledger().live) > KEEP_LIVE * ledger().total

    def _revoked(self, tokens: list[str]) -> None:
        at = time.time()
        ledger().revoked_now(tokens, at)
        ledger().counts["revocations"] += 1
        ledger().counts["sessions_revoked"] += len(tokens)
        time.sleep(max(0.0, at + GRACE_S - time.time()) + 0.005)  # gevent's sleep: the others run
        for token in tokens[:5]:
            self._probe(token)

    def _probe(self, token: str) -> None:
        started = time.time()
        # A fresh address per probe: probes fail on purpose and must not spend one budget.
        headers = {"cookie": signed_cookie(token, SECRET), "x-forwarded-for": client_address(4)}
        with self.client.get("/validate", headers=headers, name="admin probes revoked", catch_response=True) as r:
            ledger().counts["probes"] += 1
            ledger().check(r, token, started, lambda: ledger().owner[token])
