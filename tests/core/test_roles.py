"""Role lists as Better Auth writes them (``"admin,member"``) and the role names a policy may ask for."""

from __future__ import annotations

import pytest

from gateway.core.roles import any_role, checked_roles, org_condition, role_list, split_roles


@pytest.mark.parametrize(
    ("text", "roles"),
    [
        (None, set()),
        ("", set()),
        ("member", {"member"}),
        ("admin,member", {"admin", "member"}),
        (" admin , member ,", {"admin", "member"}),  # parseRoleList: split, trim, drop empty parts
        (",,", set()),
    ],
)
def test_role_list_reads_as_better_auth_does(text: str | None, roles: set[str]) -> None:
    assert role_list(text) == roles


def test_any_role_matches_one_of_several() -> None:
    allowed = frozenset({"owner", "admin"})
    assert any_role("member,admin", allowed)
    assert not any_role("member", allowed)
    assert not any_role(None, allowed)  # no active organization, or no member of it
    assert not any_role("Admin", allowed)  # roles are compared as written, as Better Auth does


@pytest.mark.parametrize("names", [[""], [" admin"], ["admin,owner"], [1], []])
def test_a_role_that_cannot_be_compared_one_way_is_refused(names: list[object]) -> None:
    with pytest.raises(ValueError, match="allowed_org_roles"):
        checked_roles(names, "allowed_org_roles")


def test_org_condition_is_none_absent_and_refused_when_the_feature_is_off() -> None:
    assert org_condition(None, "x", organizations=False) is None
    assert org_condition(["admin"], "x", organizations=True) == frozenset({"admin"})
    with pytest.raises(ValueError, match="GATEWAY_ORGANIZATIONS=on"):
        org_condition(["admin"], "x", organizations=False)
    assert split_roles(["admin, owner", "member"]) == ["admin", "owner", "member"]
    with pytest.raises(ValueError, match="not a role name"):
        org_condition(split_roles(["admin,,owner"]), "x", organizations=True)
