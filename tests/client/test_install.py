"""``pip install`` of the client alone (clients/python) into a fresh environment: httpx, none of the server.

The client is built from the repository (not editable) and installed with its dependencies from
the package index, into a virtual environment of the test's own; what that environment then
holds is read with ``importlib.metadata`` there, and the installed client asks a real gateway.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.support import ROOT
from tests.support.credentials import cookie
from tests.support.ports import free_port

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.server import Server

CLIENT = ROOT / "clients" / "python"

# The gateway server's dependencies (pyproject.toml, [project].dependencies, and what they pull):
# not one may come with the client.
SERVER = frozenset(
    {
        "better-auth-gateway",
        "granian",
        "asyncpg",
        "redis",
        "hiredis",
        "uvloop",
        "msgspec",
        "cryptography",
        "pyjwt",
        "prometheus-client",
        "pgserver",
    }
)

LIST = "import importlib.metadata as m, json; print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"

# What the installed client answers about a session, a forged token and a gateway that is not there.
ASK = """
import json, sys
from better_auth_gateway_client import GatewayUnavailable, SyncGatewayClient
url, dead, token, cookie = sys.argv[1:]
with SyncGatewayClient(url) as client:
    identity = client.validate(token)
    by_cookie = client.validate_request({"cookie": cookie, "x-other": "1"})
    forged = client.validate("forged-token-0123456789abcdef")
try:
    SyncGatewayClient(dead, timeout=0.5).validate(token)
    down = "answered"
except GatewayUnavailable:
    down = "unavailable"
print(json.dumps([identity.user.id, identity.user.roles, by_cookie == identity, forged, down]))
"""


def names(python: Path, cwd: Path) -> set[str]:
    """The distributions installed for ``python``, normalised (``prometheus_client`` -> ``prometheus-client``)."""
    out = subprocess.run(  # noqa: S603  (our own interpreters and pip, fixed arguments)
        [python, "-c", LIST], cwd=cwd, capture_output=True, text=True, check=True, timeout=60
    )
    return {name.lower().replace("_", "-").replace(".", "-") for name in json.loads(out.stdout)}


def run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python args...`` in ``cwd`` (outside the repository: nothing of it is importable from there)."""
    return subprocess.run(  # noqa: S603  (our own interpreters and pip, fixed arguments)
        [python, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(python, cwd)``: a new virtual environment holding the client, installed alone from clients/python."""
    where = tmp_path_factory.mktemp("fresh")
    venv = where / "venv"
    subprocess.run(  # noqa: S603  (our own interpreters and pip, fixed arguments)
        [sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    # This environment's pip installs into the new one (--python): not editable, built from the path.
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(CLIENT)]
    done = subprocess.run(  # noqa: S603  (our own interpreters and pip, fixed arguments)
        install, capture_output=True, text=True, check=False, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return python, where


def test_the_client_alone_pulls_in_none_of_the_servers_dependencies(fresh: tuple[Path, Path]) -> None:
    """The fresh environment holds the client and httpx, and no server dependency, FastAPI or Starlette."""
    python, cwd = fresh
    installed = names(python, cwd)
    assert {"better-auth-gateway-client", "httpx"} <= installed
    assert installed & SERVER == set()
    assert installed & {"fastapi", "starlette", "pydantic"} == set()  # extras stay optional


def test_the_installed_client_imports_without_the_server(fresh: tuple[Path, Path]) -> None:
    """The client and its ASGI middleware import there; the gateway does not, FastAPI glue only with its extra."""
    python, cwd = fresh
    ok = run(python, cwd, "-c", "import better_auth_gateway_client, better_auth_gateway_client.asgi")
    assert ok.returncode == 0, ok.stderr
    server = run(python, cwd, "-c", "import gateway")
    assert "No module named 'gateway'" in server.stderr
    glue = run(python, cwd, "-c", "import better_auth_gateway_client.fastapi")
    assert "No module named 'fastapi'" in glue.stderr


async def test_the_installed_client_asks_a_real_gateway(
    fresh: tuple[Path, Path], gateway: Server, admin: tuple[str, str]
) -> None:
    """From the fresh environment: a session's identity, by token and by Cookie; a forgery None; no gateway an error."""
    python, cwd = fresh
    uid, token = admin
    dead = f"http://127.0.0.1:{free_port()}"
    done = run(python, cwd, "-c", ASK, gateway.url, dead, token, cookie(token)["cookie"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [uid, ["admin", "user"], True, None, "unavailable"]


def test_the_extras_pull_in_none_of_the_servers_dependencies(tmp_path: Path) -> None:
    """``[fastapi,starlette]``: what pip would install holds FastAPI and Starlette, and nothing of the server."""
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run(  # noqa: S603  (our own interpreters and pip, fixed arguments)
        [sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv"], check=True, timeout=120
    )
    report = tmp_path / "report.json"
    resolve = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--dry-run"]
    resolve += ["--ignore-installed", "--report", str(report), f"{CLIENT}[fastapi,starlette]"]
    done = subprocess.run(  # noqa: S603  (our own interpreters and pip, fixed arguments)
        resolve, capture_output=True, text=True, check=False, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    planned = {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}
    assert {"better-auth-gateway-client", "httpx", "fastapi", "starlette"} <= planned
    assert planned & SERVER == set()
