"""``examples/docker-compose.yml``: valid, complete, and its parts working together.

No Docker engine here, so the file is not run. It is validated against the Compose
specification's schema (the copy ``check-jsonschema`` ships: no network needed) and read for what
makes it start: every service it names is defined, the gateway waits for its triggers, nginx's
upstreams are its services. Then its own parts run for real without containers: the example
Better Auth server (``examples/better-auth``, on the tests' pinned install), ``gateway
install-triggers`` and ``gateway serve`` configured as in the file, and the demo app; a sign-up
validates, its identity reaches the app, and a sign-out is refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from gateway.config import load_settings
from tests.support import ROOT
from tests.support.better_auth import PASSWORD, PEER, stateless_client
from tests.support.credentials import SECRET
from tests.support.ports import free_port
from tests.support.server import wait_listening
from tests.support.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLES = ROOT / "examples"
COMPOSE = EXAMPLES / "docker-compose.yml"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).with_name("check-jsonschema")  # the tests group installs it
    return subprocess.run(  # noqa: S603  (our own files)
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_is_valid_against_the_compose_specification(tmp_path: Path) -> None:
    """The file validates; the same file with a misspelt key or a wrong depends_on condition does not."""
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    text = COMPOSE.read_text()
    for bad in (
        text.replace("depends_on:", "depend_on:", 1),
        text.replace("service_completed_successfully", "service_finished"),
    ):
        broken = tmp_path / "docker-compose.yml"
        broken.write_text(bad)
        assert check_jsonschema(broken).returncode != 0


def test_compose_defines_every_service_it_uses() -> None:
    """Every depends_on names a service of the file, and nginx's upstreams are its services on their ports."""
    services = compose()["services"]
    assert {"postgres", "redis", "better-auth", "gateway-triggers", "gateway", "app", "nginx"} <= services.keys()
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= services.keys(), name
    upstreams = re.findall(r"server\s+([\w-]+):(\d+);", (EXAMPLES / "nginx" / "compose.conf").read_text())
    ports = {"gateway": "8080", "app": services["app"]["command"][-1]}  # 8080: the image's GATEWAY_PORT
    assert sorted(upstreams) == sorted(ports.items())
    for volume in services["nginx"]["volumes"]:
        assert (EXAMPLES / volume.split(":")[0]).exists(), volume
    for volume in services["app"]["volumes"]:
        assert (EXAMPLES / volume.split(":")[0]).is_file(), volume
    for name, service in services.items():
        if "build" in service:
            assert (EXAMPLES / service["build"] / "Dockerfile").is_file(), name
        else:
            assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+[\w.-]*", service["image"]), f"{name}: pin an exact version"


def test_compose_installs_the_triggers_before_the_gateway_serves() -> None:
    """A one-shot ``install-triggers`` after Better Auth's migrations; the gateway waits for it to succeed."""
    services = compose()["services"]
    triggers, gateway = services["gateway-triggers"], services["gateway"]
    assert triggers["command"] == ["install-triggers"]
    assert triggers["build"] == gateway["build"] == ".."
    assert triggers["depends_on"]["better-auth"]["condition"] == "service_healthy"  # its migrations ran
    assert gateway["depends_on"]["gateway-triggers"]["condition"] == "service_completed_successfully"
    assert triggers["environment"]["DATABASE_URL"] == gateway["environment"]["DATABASE_URL"]


def test_compose_gateway_is_configured_as_better_auth() -> None:
    """The gateway's settings load; its secret is a compose secret file, the one Better Auth reads; same base URL."""
    compose_file = compose()
    services = compose_file["services"]
    gateway, auth = services["gateway"]["environment"], services["better-auth"]["environment"]
    assert "BETTER_AUTH_SECRET" not in gateway
    assert "BETTER_AUTH_SECRET" not in auth
    for service, env in (("gateway", gateway), ("better-auth", auth)):
        secret = env["BETTER_AUTH_SECRET_FILE"].removeprefix("/run/secrets/")
        assert secret in services[service]["secrets"]
        assert secret in compose_file["secrets"]
    assert gateway["BETTER_AUTH_URL"] == auth["BETTER_AUTH_URL"]  # the cookie name both imply
    assert gateway["GATEWAY_LOGIN_URL"] == auth["BETTER_AUTH_URL"] + "/login"
    assert gateway["GATEWAY_PROXY"] == "nginx"
    env = {k: v for k, v in gateway.items() if not k.endswith("_FILE")} | {"BETTER_AUTH_SECRET": SECRET}
    settings = load_settings(env)  # every GATEWAY_* name known, every value valid
    assert settings.workers == int(gateway["GATEWAY_WORKERS"])


def test_compose_better_auth_is_the_tests_version() -> None:
    """The example Better Auth pins, and locks, the version the tests run as their reference peer."""
    ours = json.loads((EXAMPLES / "better-auth" / "package.json").read_text())["dependencies"]
    peer = json.loads((PEER / "package.json").read_text())["dependencies"]
    assert ours["better-auth"] == peer["better-auth"]
    locked = json.loads((EXAMPLES / "better-auth" / "package-lock.json").read_text())["packages"]
    assert locked["node_modules/better-auth"]["version"] == ours["better-auth"]


@contextlib.contextmanager
def process(args: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # noqa: S603
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture
def example_better_auth(node_modules: Path, database: str, tmp_path: Path) -> Iterator[str]:
    """``examples/better-auth/server.mjs`` on the tests' Better Auth install; yields its URL."""
    shutil.copy(EXAMPLES / "better-auth" / "server.mjs", tmp_path)
    shutil.copy(EXAMPLES / "better-auth" / "login.html", tmp_path)
    (tmp_path / "node_modules").symlink_to(node_modules)
    (tmp_path / "secret").write_text(SECRET + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"PATH": str(Path(shutil.which("node") or "node").parent), "DATABASE_URL": database, "PORT": str(port)}
    env |= {"BETTER_AUTH_SECRET_FILE": str(tmp_path / "secret"), "BETTER_AUTH_URL": url, "APP_URL": "http://app.test/"}
    with process(["node", "server.mjs"], tmp_path, env) as proc:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "ready", line + (proc.stdout.read() if proc.stdout else "")
        yield url


async def test_compose_parts_sign_in_validate_reach_the_app_and_sign_out(
    example_better_auth: str, database: str, start_gateway: Any, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Better Auth's sign-up validates at the gateway, its identity reaches the demo app, its sign-out is refused."""
    auth = example_better_auth
    page = await client.get(auth + "/login")
    assert page.status_code == 200
    assert "http://app.test/" in page.text
    assert "{{" not in page.text
    # The one-shot service: `gateway install-triggers` on the tables Better Auth's migrations made.
    env = {"PATH": str(Path(sys.executable).parent), "DATABASE_URL": database}
    triggers = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "install-triggers", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await triggers.communicate()
    assert triggers.returncode == 0, stderr.decode()
    gateway = compose()["services"]["gateway"]["environment"]
    keep = ("GATEWAY_PROXY", "GATEWAY_WORKERS")
    server = start_gateway(
        {k: gateway[k] for k in keep}
        | {"DATABASE_URL": database, "BETTER_AUTH_URL": auth, "GATEWAY_LOGIN_URL": auth + "/login"}
    )
    await wait_listening(client, server)

    async with stateless_client() as ba:
        signed_up = await ba.post(
            auth + "/api/auth/sign-up/email",
            json={"email": "compose@example.com", "password": PASSWORD, "name": "Compose"},
            headers={"origin": auth},
        )
        assert signed_up.status_code == 200, signed_up.text
        cookie = {"cookie": signed_up.headers["set-cookie"].split(";", 1)[0]}
        allowed = await ba.get(server.url + "/validate", headers=cookie)
        assert allowed.status_code == 200
        assert allowed.headers["x-auth-request-email"] == "compose@example.com"
        refused = await ba.get(server.url + "/validate", headers={"x-original-url": "http://app.test/x"})
        assert refused.status_code == 401

        identity = {k: v for k, v in allowed.headers.items() if k.startswith("x-auth-request-")}
        port = free_port()
        app = [sys.executable, str(EXAMPLES / "demo-app" / "app.py"), str(port)]
        with process(app, tmp_path, {}):

            async def echoed() -> dict[str, str] | None:
                with contextlib.suppress(httpx.TransportError):
                    body: dict[str, str] = (await ba.get(f"http://127.0.0.1:{port}/dashboard", headers=identity)).json()
                    return body
                return None

            body = await eventually(echoed)
        assert body["x-auth-request-email"] == "compose@example.com"
        assert body["x-auth-request-user"] == allowed.headers["x-auth-request-user"]
        assert body["path"] == "/dashboard"

        signed_out = await ba.post(auth + "/api/auth/sign-out", headers=cookie | {"origin": auth})
        assert signed_out.status_code == 200, signed_out.text

        async def refused_now() -> bool:
            return (await ba.get(server.url + "/validate", headers=cookie)).status_code == 401

        await eventually(refused_now, within=1)
