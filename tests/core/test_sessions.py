"""Sessions, reasons and verdicts: Better Auth's JSON shape in, bans and roles read, no token kept."""

from __future__ import annotations

import datetime as dt
import math

import msgspec
import pytest

from gateway.core.fields import returned_fields
from gateway.core.sessions import Reason, Session, Verdict, iso_epoch

EXPIRES = "2030-01-01T00:00:00.000Z"
EPOCH = dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()


def better_auth(**user: object) -> tuple[dict[str, object], dict[str, object]]:
    session: dict[str, object] = {
        "id": "s1",
        "token": "t" * 32,
        "userId": "u1",
        "expiresAt": EXPIRES,
        "activeTeamId": "x",
    }
    return session, {"id": "u1", "email": "ada@example.com"} | user


def test_a_session_from_better_auths_shape_keeps_no_token() -> None:
    """expiresAt is read as epoch seconds; the token never stays, whatever the fields."""
    session, user = better_auth()
    found = Session.from_better_auth(session, user)
    assert found.expires_at == EPOCH
    assert "token" not in found.session
    assert found.session["activeTeamId"] == "x"
    assert (found.user_id, found.session_id, found.role, found.banned_until) == ("u1", "s1", None, 0.0)
    fields = returned_fields("", "", "", "", "")
    assert "token" not in Session.from_better_auth(session, user, fields).session


def test_fields_keep_only_what_better_auth_returns() -> None:
    """With a field configuration, a column Better Auth doesn't return never reaches the answer."""
    session, user = better_auth(secretNote="x", role="admin", banned=False)
    found = Session.from_better_auth(session, user, returned_fields("", "", "", "", ""))
    assert "activeTeamId" not in found.session
    assert set(found.user) == {"id", "email"}
    assert found.role == "admin"  # read for decisions whether or not it is returned


@pytest.mark.parametrize(
    ("user", "banned_until"),
    [
        ({"banned": True}, math.inf),
        ({"banned": True, "banExpires": EXPIRES}, EPOCH),
        ({"banned": False, "banExpires": EXPIRES}, 0.0),
        ({"banned": "true"}, 0.0),  # only the boolean true is a ban
    ],
)
def test_bans_are_read_from_the_admin_plugins_fields(user: dict[str, object], banned_until: float) -> None:
    """banned with no banExpires is for good; with one, until then; anything but true is no ban."""
    session, base = better_auth(**user)
    assert Session.from_better_auth(session, base).banned_until == banned_until


def test_a_role_that_is_not_a_string_is_none() -> None:
    """A role of another type is ignored rather than trusted."""
    session, user = better_auth(role=["admin"])
    assert Session.from_better_auth(session, user).role is None


@pytest.mark.parametrize("bad", [None, 1700000000, "yesterday", ""])
def test_a_date_that_is_not_iso_is_a_value_error(bad: object) -> None:
    """expiresAt (or banExpires) that is not an ISO string raises ValueError."""
    with pytest.raises(ValueError, match=r"ISO|Invalid isoformat"):
        iso_epoch(bad)
    session, user = better_auth()
    session["expiresAt"] = bad
    with pytest.raises(ValueError, match=r"ISO|Invalid isoformat"):
        Session.from_better_auth(session, user)


def test_iso_epoch_reads_offsets() -> None:
    """An ISO date with an offset is read at that offset."""
    assert iso_epoch("2030-01-01T01:00:00+01:00") == EPOCH


def test_a_session_survives_msgpack_and_is_frozen() -> None:
    """A session round-trips through msgpack unchanged (the shared cache's format), and cannot be changed."""
    session, user = better_auth(role="admin", banned=True)
    found = Session.from_better_auth(session, user)
    again = msgspec.msgpack.Decoder(Session).decode(msgspec.msgpack.encode(found))
    assert again == found
    with pytest.raises(AttributeError):
        found.role = "user"  # type: ignore[misc]


def test_reasons_are_their_own_names_and_only_ok_is_allowed() -> None:
    """Reasons are bounded strings (log fields, metric labels); a verdict is allowed iff its reason is ok."""
    assert all(str(reason) == reason.name for reason in Reason)
    assert [r for r in Reason if Verdict(r).allowed] == [Reason.ok]
    assert Verdict(Reason.expired).session is None
