"""Which fields Better Auth returns: core + plugins + additional fields, less the hidden ones; never the token."""

from __future__ import annotations

import pytest

from gateway.core.fields import CORE_SESSION, CORE_USER, PLUGINS, Fields, names, returned_fields


def test_names_are_a_trimmed_comma_list() -> None:
    """Blanks and empty items are dropped; order is kept."""
    assert names(" a, b ,,c ,") == ("a", "b", "c")
    assert names("") == ()


def test_the_core_fields_alone() -> None:
    """No plugin, no additional field: Better Auth's core schema."""
    fields = returned_fields("", "", "", "", "")
    assert fields == Fields(frozenset(CORE_USER), frozenset(CORE_SESSION))


def test_plugins_and_additional_fields_add_hidden_ones_remove() -> None:
    """Each named plugin adds its fields; additional fields add; hidden fields come out, core ones included."""
    fields = returned_fields("admin, organization:teams", "plan", "tenant", "banReason, image", "ipAddress")
    assert {"role", "banned", "banExpires", "plan"} <= fields.user
    assert not {"banReason", "image"} & fields.user
    assert {"impersonatedBy", "activeOrganizationId", "activeTeamId", "tenant"} <= fields.session
    assert "ipAddress" not in fields.session


def test_every_plugin_is_known_with_field_tuples() -> None:
    """Plugins that add no field are listed too, so a deployment can name every plugin it uses."""
    assert PLUGINS["bearer"] == ((), ())
    assert all(isinstance(u, tuple) and isinstance(s, tuple) for u, s in PLUGINS.values())


def test_an_unknown_plugin_is_a_key_error() -> None:
    """A plugin the gateway does not know raises KeyError (the settings report it first)."""
    with pytest.raises(KeyError):
        returned_fields("notAPlugin", "", "", "", "")


def test_user_of_and_session_of_keep_only_returned_fields_and_never_the_token() -> None:
    """Filtering keeps the returned fields only; a session's token never, even if configured."""
    fields = Fields(frozenset({"id", "email"}), frozenset({"id", "token"}))
    assert fields.user_of({"id": "u", "email": "e", "password": "p"}) == {"id": "u", "email": "e"}
    assert fields.session_of({"id": "s", "token": "t", "ipAddress": "1.2.3.4"}) == {"id": "s"}
