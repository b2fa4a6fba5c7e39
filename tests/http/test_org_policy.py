"""allowed_org_roles: the member's role in the active organization, in the auth URL's query and the rules file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest

from gateway.core.sessions import Session
from gateway.http import policy
from gateway.http.responses import Identity
from gateway.http.rules_file import RulesFile

if TYPE_CHECKING:
    from pathlib import Path


def member(role: str | None, org: str | None = "org1", user_role: str | None = None) -> Session:
    return Session(1e12, 0.0, {"id": "s"}, {"id": "u", "email": "ada@example.com"}, user_role, org, role)


@pytest.mark.parametrize(
    ("query", "who", "allowed"),
    [
        ("allowed_org_roles=admin", member("admin"), True),
        ("allowed_org_roles=admin,owner", member("owner"), True),
        ("allowed_org_roles=admin, owner", member("owner"), True),
        ("allowed_org_roles=admin&allowed_org_roles=owner", member("owner"), True),
        ("allowed_org_roles=admin", member("member,admin"), True),  # several roles: any one
        ("allowed_org_roles=admin", member("member"), False),
        ("allowed_org_roles=admin", member(None), False),  # active organization, no member of it
        ("allowed_org_roles=admin", member(None, None), False),  # no active organization
        ("allowed_org_roles=admin", member("member", user_role="admin"), False),  # the user's role is another
        ("allowed_roles=admin", member("admin"), False),  # ... and the other way round
        ("allowed_org_roles=admin&allowed_roles=admin&satisfy=any", member("member", user_role="admin"), True),
        ("allowed_org_roles=admin&allowed_roles=admin", member("member", user_role="admin"), False),
    ],
)
def test_query_org_roles(query: str, who: Session, allowed: bool) -> None:
    rule = policy.from_query(query, organizations=True)
    assert rule is not None
    assert rule.allows(who) is allowed


@pytest.mark.parametrize(
    "query",
    [f"allowed_org_roles{v}" for v in ("=", "", "=admin,,owner", "=,", "=%20")],
)
def test_an_unparsable_query_condition_is_an_error_never_no_condition(query: str) -> None:
    with pytest.raises(ValueError, match="allowed_org_roles"):
        policy.from_query(query, organizations=True)


def test_a_query_condition_that_could_never_be_met_is_refused() -> None:
    with pytest.raises(ValueError, match="GATEWAY_ORGANIZATIONS=on"):
        policy.from_query("allowed_org_roles=admin")
    assert policy.from_query("allowed_roles=admin") is not None  # the others need nothing more


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[]", "names no role"),
        ('[""]', "not a role name"),
        ('["admin,owner"]', "not a role name"),
        ('[" admin"]', "not a role name"),
        ('"admin"', "Expected `array`, got `str`"),
    ],
)
def test_a_rules_file_with_a_bad_condition_does_not_load(tmp_path: Path, value: str, message: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(f'[[rules]]\npath_prefix = "/admin/"\nallowed_org_roles = {value}\n')
    with pytest.raises(ValueError, match=message):
        policy.load_rules(str(path), organizations=True)


def test_a_json_null_is_no_list_of_roles(tmp_path: Path) -> None:
    """JSON can say null: refused, as every other bad value, rather than read as no condition."""
    path = tmp_path / "rules.json"
    path.write_text('{"rules": [{"path_prefix": "/admin/", "allowed_org_roles": null}]}')
    with pytest.raises(ValueError, match="Expected `array`, got `null`"):
        policy.load_rules(str(path), organizations=True)


def test_a_rules_file_naming_org_roles_needs_the_feature(tmp_path: Path) -> None:
    """Off, a rule with allowed_org_roles is refused at startup and on reload (the rules in force stay)."""
    path = tmp_path / "rules.toml"
    path.write_text('[[rules]]\npath_prefix = "/admin/"\nallowed_roles = ["admin"]\n')
    held = RulesFile(str(path))
    path.write_text('[[rules]]\npath_prefix = "/admin/"\nallowed_org_roles = ["admin"]\n')
    with pytest.raises(ValueError, match=r"rules\[0\]\.allowed_org_roles needs GATEWAY_ORGANIZATIONS=on"):
        policy.load_rules(str(path))
    assert held.reload() is False
    assert held.current.rules[0].allowed_org_roles is msgspec.UNSET
    on = RulesFile(str(path), organizations=True)
    assert on.current.rules[0].allowed_org_roles == frozenset({"admin"})
    assert on.current.rules[0].allows(member("admin"))
    assert not on.current.rules[0].allows(member("member"))


def test_the_org_id_header_is_empty_for_no_member_of_it() -> None:
    """Red team: a member removed from the active organization kept ``X-Auth-Request-Org-Id`` naming it.

    An upstream keying its tenant on that header served the organization to someone no longer in it;
    the README says both headers are empty then (``/v1/validate`` still says ``{"id", "role": null}``).
    """
    headers = Identity(organizations=True).headers
    assert dict(headers(member(None)))["x-auth-request-org-id"] == ""
    assert dict(headers(member(None)))["x-auth-request-org-role"] == ""
    assert dict(headers(member("admin")))["x-auth-request-org-id"] == "org1"
    assert dict(headers(member(None, None)))["x-auth-request-org-id"] == ""
