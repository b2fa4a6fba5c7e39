"""Rules reload without a restart: on a change and on SIGHUP, whole or not at all (a real server, 2 workers)."""

from __future__ import annotations

import logging
import os
import re
import signal
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gateway.http.rules_file import RulesFile
from gateway.postgres import seed
from tests.support.credentials import cookie
from tests.support.server import statuses
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from pathlib import Path

    import asyncpg

    from tests.support.server import Server

ADMINS = b'[[rules]]\npath_prefix = "/admin/"\nallowed_roles = ["admin"]\n'
USERS = b'[[rules]]\npath_prefix = "/admin/"\nallowed_roles = ["admin", "user"]\n'
BROKEN = b'[[rules]]\npath_prefix = "/admin/"\nallowed_rolez = ["user"]\n'
ADMIN_PAGE = {"x-original-url": "https://app.example.com/admin/x", "x-original-method": "GET"}


@pytest.fixture
async def token(db: asyncpg.Connection) -> str:
    """A session of a plain user (role ``user``)."""
    return await seed.create_session(db, await seed.create_user(db, email="ada@example.com", role="user"))


def _kubernetes_volume(folder: Path, content: bytes) -> Path:
    """A ConfigMap volume as the kubelet lays it out: rules.toml -> ..data/rules.toml, ..data -> a version."""
    (folder / "..v1").mkdir()
    (folder / "..v1" / "rules.toml").write_bytes(content)
    (folder / "..data").symlink_to("..v1")
    (folder / "rules.toml").symlink_to("..data/rules.toml")
    return folder / "rules.toml"


def _kubernetes_update(folder: Path, version: str, content: bytes) -> None:
    """The kubelet's update: a new version folder, then ``..data`` swapped to it by one rename."""
    (folder / version).mkdir()
    (folder / version / "rules.toml").write_bytes(content)
    (folder / "..data_tmp").symlink_to(version)
    (folder / "..data_tmp").rename(folder / "..data")


def _lines(server: Server, message: str) -> int:
    return sum(message in line for line in server.output().splitlines())


async def _every_worker_open(server: Server, workers: int = 2) -> bool:
    """Whether every worker has opened (its listener connected): each loaded the rules file first.

    A worker still starting when the file changes loads the new file and has nothing to reload:
    the counts below assume both loaded the first one.
    """
    async with httpx.AsyncClient(timeout=5) as c:
        text = (await c.get(server.url + "/metrics")).text
    found = re.search(r'^gateway_events_total\{event="listener_connect"\} ([\d.e+]+)$', text, re.MULTILINE)
    return found is not None and float(found.group(1)) >= workers


async def _everywhere(server: Server, headers: dict[str, str], status: int) -> bool:
    """Whether requests spread over the workers all get ``status``."""
    return await statuses(server.url, headers) == {status}


async def test_a_change_applies_on_every_worker_and_a_broken_file_keeps_the_policy(
    database: str, token: str, tmp_path: Path, start_gateway: Any, client: httpx.AsyncClient
) -> None:
    """A ConfigMap swap and an in-place write apply on both workers; a broken file is refused by each, logged once."""
    rules = _kubernetes_volume(tmp_path, ADMINS)
    env = {"DATABASE_URL": database, "GATEWAY_RULES_FILE": str(rules), "GATEWAY_PROXY": "nginx"}
    gw = start_gateway(env | {"GATEWAY_RULES_RELOAD_S": "0.1", "GATEWAY_METRICS_FLUSH_S": "0.1"}, workers=2)
    await eventually(lambda: _every_worker_open(gw), within=20)
    user = ADMIN_PAGE | cookie(token)
    r = await client.get(gw.url + "/validate", headers=user)
    assert (r.status_code, r.headers.get("x-auth-reason")) == (403, "forbidden")

    _kubernetes_update(tmp_path, "..v2", USERS)
    await eventually(lambda: _everywhere(gw, user, 200), within=10)
    await eventually(lambda: _lines(gw, "rules file reloaded") == 2)  # one per worker

    rules.write_bytes(ADMINS)  # in place, through the symlinks
    await eventually(lambda: _everywhere(gw, user, 403), within=10)
    await eventually(lambda: _lines(gw, "rules file reloaded") == 4)

    _kubernetes_update(tmp_path, "..v3", BROKEN)
    await eventually(lambda: _lines(gw, "rules file refused") == 2, within=10)  # each worker, once
    assert "allowed_rolez" in gw.output()
    assert str(rules) in gw.output()
    assert await _everywhere(gw, user, 403)  # the rules in force stay
    assert await _everywhere(gw, ADMIN_PAGE | {"x-original-url": "https://app.example.com/x"} | cookie(token), 200)

    async def counted() -> bool:
        text = (await client.get(gw.url + "/metrics")).text
        return 'gateway_events_total{event="rules_reload_failed"} 2.0' in text

    await eventually(counted, within=10)

    rules.write_bytes(USERS)  # a good file after a bad one is taken
    await eventually(lambda: _everywhere(gw, user, 200), within=10)
    assert _lines(gw, "rules file refused") == 2  # refused once per change, not once per poll
    assert gw.proc.poll() is None


async def test_sighup_reloads_every_worker_in_place(
    database: str, token: str, tmp_path: Path, start_gateway: Any
) -> None:
    """With polling off, SIGHUP reloads both workers (granian does not respawn them); a bad file keeps the policy."""
    rules = tmp_path / "rules.toml"
    rules.write_bytes(ADMINS)
    env = {"DATABASE_URL": database, "GATEWAY_RULES_FILE": str(rules), "GATEWAY_PROXY": "nginx"}
    gw = start_gateway(env | {"GATEWAY_RULES_RELOAD_S": "0", "GATEWAY_METRICS_FLUSH_S": "0.1"}, workers=2)
    await eventually(lambda: _every_worker_open(gw), within=20)
    user = ADMIN_PAGE | cookie(token)
    assert await _everywhere(gw, user, 403)

    rules.with_suffix(".new").write_bytes(USERS)
    rules.with_suffix(".new").rename(rules)
    os.kill(gw.proc.pid, signal.SIGHUP)
    await eventually(lambda: _lines(gw, "rules file reloaded") == 2, within=10)
    assert await _everywhere(gw, user, 200)

    rules.write_bytes(BROKEN)
    os.kill(gw.proc.pid, signal.SIGHUP)
    await eventually(lambda: _lines(gw, "rules file refused") == 2, within=10)
    assert await _everywhere(gw, user, 200)
    assert "Respawning worker" not in gw.output()
    assert gw.proc.poll() is None


def test_a_file_that_goes_and_comes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A missing or broken file is refused once and the rules stay; an unchanged file is not parsed again."""
    path = tmp_path / "rules.json"
    path.write_text('{"rules": [{"path_prefix": "/admin/", "allowed_roles": ["admin"]}]}')
    rules = RulesFile(str(path))
    first = rules.current
    assert not rules.check()  # unchanged
    assert rules.current is first
    path.unlink()
    with caplog.at_level(logging.ERROR, "gateway"):
        assert not rules.check()
        assert not rules.check()
    assert [r.getMessage().split(": ", 1)[0] for r in caplog.records] == ["rules file refused, the rules in force stay"]
    assert "No such file" in caplog.records[0].getMessage()
    assert rules.current is first
    path.write_text('{"rules": [{"path_prefix": "/admin/", "allowed_roles": ["user"]}]}')
    assert rules.check()
    assert rules.current.rules[0].allowed_roles == {"user"}
    path.write_text('{"rules": [{"path_prefix": "/Admin/"}]}')  # refused at load: so on reload too
    assert not rules.check()
    assert rules.current.rules[0].allowed_roles == {"user"}
    with pytest.raises(ValueError, match=r"rules\.json\.gone: "):
        RulesFile(str(tmp_path / "rules.json.gone"))
