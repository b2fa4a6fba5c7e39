"""Role lists as Better Auth writes them (``"admin,member"``) and the role names a policy may ask for."""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING

import pytest

from gateway.core.roles import any_role, checked_roles, org_condition, role_list, split_roles

if TYPE_CHECKING:
    from pathlib import Path


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


@pytest.mark.parametrize("names", [[""], [" admin"], ["\ufeffadmin"], ["admin,owner"], [1], []])
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


# Blanks Python's str.strip() and JavaScript's trim() disagree on: \x1c-\x1f and \x85 (Python's
# alone), \ufeff (JavaScript's alone); and the ones both trim, as a control.
HOSTILE_ROLES = ["\x1fowner", "owner\x1c", "\x85owner", "\ufeffowner", "owner\ufeff,member", "\xa0owner ", "\towner"]


def test_role_list_trims_as_javascript_does(node_modules: Path) -> None:
    """Red team: role_list trimmed with str.strip(), whose blanks are not JavaScript's trim()'s.

    A member role ``"\\x1fowner"`` (Better Auth's ``parseRoleList`` keeps it: not ``owner``, so its
    owner-only checks do not apply) met ``allowed_org_roles = ["owner"]``; ``"\\ufeffowner"``, which
    Better Auth reads as ``owner``, did not. The real ``parseRoleList`` is the oracle.
    """
    roles_module = node_modules / "better-auth" / "dist" / "plugins" / "organization" / "roles.mjs"
    script = (
        f"import {{ parseRoleList }} from {json.dumps(roles_module.as_uri())};"
        "const lines = JSON.parse(process.argv[1]).map((r) => parseRoleList(r));"
        "process.stdout.write(JSON.stringify(lines));"
    )
    done = subprocess.run(  # noqa: S603  (our own script, our own arguments)
        ["node", "--input-type=module", "-e", script, json.dumps(HOSTILE_ROLES)],
        cwd=node_modules.parent,
        capture_output=True,
        check=True,
        timeout=60,
    )
    expected = json.loads(done.stdout)
    for text, roles in zip(HOSTILE_ROLES, expected, strict=True):
        assert role_list(text) == set(roles), repr(text)
        assert any_role(text, frozenset({"owner"})) == ("owner" in roles), repr(text)
