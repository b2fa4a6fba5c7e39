"""Real nginx and Caddy, configured from ``examples/``, protecting a real upstream with real Better Auth cookies."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from gateway import seed
from gateway.tokens import sign
from tests.better_auth_peer import BetterAuth, node_modules
from tests.conftest import ROOT, SECRET, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

__all__ = ["node_modules"]  # a fixture, used by name

EXAMPLES = ROOT / "examples"


class Echo(BaseHTTPRequestHandler):
    """The protected app: answers with what reached it."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        seen = {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "body": body}
        data = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer  # noqa: N815

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise RuntimeError(f"proxy did not listen:\n{log.read_text(errors='replace')}")


def from_example(text: str, gateway: int, app: int) -> str:
    """The example with the test's ports for the gateway (8080) and the app (9000)."""
    return text.replace("127.0.0.1:8080", f"127.0.0.1:{gateway}").replace("127.0.0.1:9000", f"127.0.0.1:{app}")


def start_nginx(tmp: Path, gateway: int, app: int, *, strip: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf_dir = tmp / "better-auth-gateway"
    conf_dir.mkdir()
    for name in ("upstreams.conf", "gateway.conf", "identity.conf", "strip-credentials.conf"):
        text = from_example((EXAMPLES / "nginx" / name).read_text(), gateway, app)
        if strip:  # as examples/nginx/identity.conf says to
            identity = "include better-auth-gateway/identity.conf;"
            text = text.replace(identity, f"{identity}\n        include better-auth-gateway/strip-credentials.conf;")
        (conf_dir / name).write_text(text.replace("listen 8081;", f"listen 127.0.0.1:{port};"))
    (tmp / "nginx.conf").write_text(
        f"user root;\nworker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
        "events {}\nhttp {\n    access_log off;\n"
        + "".join(
            f"    {kind}_temp_path {tmp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + "    include better-auth-gateway/upstreams.conf;\n    include better-auth-gateway/gateway.conf;\n}\n"
    )
    log = tmp / "error.log"
    proc = subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")], stderr=subprocess.STDOUT)  # noqa: S603
    wait_port(port, proc, log)
    return proc, port


def start_caddy(tmp: Path, gateway: int, app: int, *, strip: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    text = from_example((EXAMPLES / "caddy" / "Caddyfile").read_text(), gateway, app)
    if strip:  # as the Caddyfile's comment says to
        text = text.replace("copy_headers X-Auth", "copy_headers Cookie Authorization X-Session-Token X-Auth")
    (tmp / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n\n" + text.replace(":8081 {", f":{port} {{"))
    env = os.environ | {"HOME": str(tmp), "XDG_DATA_HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp)}
    log = tmp / "caddy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603
            ["caddy", "run", "--config", str(tmp / "Caddyfile"), "--adapter", "caddyfile"],
            env=env,
            stdout=out,
            stderr=out,
        )
    wait_port(port, proc, log)
    return proc, port


PROXIES = {"nginx": start_nginx, "caddy": start_caddy}


@pytest.fixture(params=list(PROXIES))
def proxy_kind(request: pytest.FixtureRequest) -> str:
    if shutil.which(request.param) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{request.param} is required in CI (.ci/run installs it)")
        pytest.skip(f"{request.param} is not installed")
    return str(request.param)


class Site:
    """A proxy in front of the upstream, the gateway deciding, with real Better Auth users."""

    def __init__(self, url: str, login: str, user: tuple[str, str], admin: tuple[str, str]) -> None:
        self.url, self.login = url, login
        (self.user_id, self.user_cookie), (self.admin_id, self.admin_cookie) = user, admin

    async def get(self, path: str, method: str = "GET", cookie: str | None = None, **headers: str) -> httpx.Response:
        if cookie:
            headers["cookie"] = cookie
        async with httpx.AsyncClient(timeout=10, follow_redirects=False) as c:
            return await c.request(method, self.url + path, headers=headers, content=headers.pop("body", None))


@pytest.fixture
async def site(
    proxy_kind: str, node_modules: Path, database: str, upstream: int, start_gateway: Any, tmp_path: Path
) -> Iterator[Site]:
    peer = BetterAuth(database)
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            users = []
            for email in ("user@example.com", "admin@example.com"):
                r = await peer.sign_up(c, email)
                pair = next(h.split(";", 1)[0] for h in r.headers.get_list("set-cookie") if "session_token=" in h)
                users.append((r.json()["user"]["id"], pair))
        conn = await asyncpg.connect(database)
        await conn.execute("""update "user" set role = 'admin' where email = 'admin@example.com'""")
        await conn.close()
        login = f"http://127.0.0.1:{free_port()}/login"
        env = {"DATABASE_URL": database, "GATEWAY_LOGIN_URL": login, "GATEWAY_RULES_FILE": str(EXAMPLES / "rules.toml")}
        gw = start_gateway(env)
        proc, port = PROXIES[proxy_kind](tmp_path, gw.port, upstream)
        try:
            yield Site(f"http://127.0.0.1:{port}", login, users[0], users[1])
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        peer.stop()


async def test_valid_cookie_reaches_upstream_with_identity(site: Site) -> None:
    """A real Better Auth cookie gets through; the app sees who it is, and no forged identity."""
    r = await site.get("/api/things", cookie=site.user_cookie, **{"X-Auth-Request-User": "forged-admin-id"})
    assert r.status_code == 200
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert seen["x-auth-request-user"] == site.user_id
    assert seen["x-auth-request-email"] == "user@example.com"


async def test_forged_identity_never_reaches_upstream(site: Site) -> None:
    """Without a session (an anonymous route), a client's X-Auth-Request-* is stripped, not passed."""
    r = await site.get("/public/page", **{"X-Auth-Request-User": "forged", "X-Auth-Request-Email": "ceo@example.com"})
    assert r.status_code == 200
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert seen.get("x-auth-request-user", "") == ""
    assert seen.get("x-auth-request-email", "") == ""


async def test_api_without_session_gets_401(site: Site) -> None:
    """An API call (XHR, JSON) without a session gets 401, not a redirect."""
    r = await site.get("/api/things", accept="application/json")
    assert r.status_code == 401
    r = await site.get("/page", accept="text/html", **{"X-Requested-With": "XMLHttpRequest"})
    assert r.status_code == 401


async def test_browser_without_session_goes_to_login(site: Site) -> None:
    """A page load without a session is sent to the login URL, with the original URL to return to."""
    r = await site.get("/dashboard?tab=2", accept="text/html,application/xhtml+xml")
    assert r.status_code == 302
    assert r.headers["location"] == f"{site.login}?rd={quote(site.url + '/dashboard?tab=2', safe='')}"


async def test_role_policy(site: Site) -> None:
    """allowed_roles on the auth URL: 403 for a signed-in user without the role, 200 for an admin."""
    assert (await site.get("/admin/panel", cookie=site.user_cookie, accept="text/html")).status_code == 403
    assert (await site.get("/admin/panel", cookie=site.admin_cookie)).status_code == 200


async def test_post_body_reaches_upstream(site: Site) -> None:
    """The auth subrequest carries no body, and the app still gets the original one."""
    r = await site.get("/api/items", method="POST", cookie=site.user_cookie, body='{"name": "widget"}')
    assert r.status_code == 200
    assert r.json()["method"] == "POST"
    assert r.json()["body"] == '{"name": "widget"}'


async def test_policy_sees_original_uri_and_method(site: Site) -> None:
    """The rules file's /reports/ rule applies to writes only: the gateway saw the original method and path."""
    assert (await site.get("/reports/1", cookie=site.user_cookie)).status_code == 200
    assert (await site.get("/reports/1", method="DELETE", cookie=site.user_cookie)).status_code == 403
    assert (await site.get("/reports/1", method="DELETE", cookie=site.admin_cookie)).status_code == 200


@pytest.fixture
async def stripping(
    proxy_kind: str, db: asyncpg.Connection, database: str, upstream: int, start_gateway: Any, tmp_path: Path
) -> AsyncIterator[tuple[str, str]]:
    """A proxy in front of the upstream with credential stripping on and a custom session cookie name."""
    token = await seed.create_session(db, await seed.create_user(db, email="strip@example.com"))
    env = {"DATABASE_URL": database, "GATEWAY_STRIP_CREDENTIALS": "true", "GATEWAY_SESSION_COOKIE_NAME": "sid"}
    gw = start_gateway(env)
    proc, port = PROXIES[proxy_kind](tmp_path, gw.port, upstream, strip=True)
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        proc.terminate()
        proc.wait(10)


async def test_stripping_leaves_no_credential_for_the_upstream(stripping: tuple[str, str]) -> None:
    """With stripping on, the app gets no credential the gateway read: any cookie name, bearer or X-Session-Token."""
    url, token = stripping
    signed = quote(sign(token, SECRET), safe="")
    cookies = (
        f"theme=dark; __Secure-sid={signed}; sid={signed}; better-auth.session_token={signed}; "
        "better-auth.session_data=eyJzZXNzaW9uIjp7fX0; better-auth.session_data.0=eyJz; "
        f"__Secure-better-auth.session_data.1=ZXNz; better-auth.dont_remember=true; other=1; sid ={signed}"
    )
    asks = [
        {"cookie": cookies},  # the custom name (both forms), session_data chunks, Better Auth's other cookies
        {"cookie": cookies, "x-session-token": token},  # X-Session-Token is the credential here
        {"cookie": cookies, "authorization": f"Bearer {sign(token, SECRET)}", "x-session-token": token},
        {"authorization": f"Bearer {token}", "x-session-token": "anything"},
    ]
    async with httpx.AsyncClient(timeout=10) as c:
        for headers in asks:
            r = await c.get(url + "/api/things", headers=headers)
            assert r.status_code == 200, (headers, r.text)
            seen = {k.lower(): v for k, v in r.json()["headers"].items()}
            assert seen.get("x-auth-request-email") == "strip@example.com"
            assert seen.get("cookie", "") == ("theme=dark; other=1" if "cookie" in headers else "")
            assert seen.get("authorization", "") == ""
            assert seen.get("x-session-token", "") == ""
            assert token not in r.text  # neither raw nor signed, anywhere
            assert "session_data" not in r.text
        # Another scheme is not the gateway's credential: the app's own Basic auth still reaches it.
        r = await c.get(url + "/api/things", headers={"cookie": f"sid={signed}", "authorization": "Basic dTpw"})
        assert r.status_code == 200
        assert {k.lower(): v for k, v in r.json()["headers"].items()}.get("authorization") == "Basic dTpw"
