"""The client's architecture: its import contracts with the server hold and bite; its modules stay small."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

CLIENT_CONTRACT = "the client (clients/python) stands alone, without the server"
SERVER_CONTRACT = "the server never imports the client"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Copies of ``gateway/``, the client's package and ``pyproject.toml``, first on the path, to break."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "gateway", tmp_path / "gateway", ignore=ignore)
    package = ROOT / "clients" / "python" / "src" / "better_auth_gateway_client"
    shutil.copytree(package, tmp_path / "better_auth_gateway_client", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(  # noqa: S603  (our own tool, fixed arguments)
        [str(script), "--no-cache", "--no-logo", str(project / "pyproject.toml")],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}  # noqa: E402\n")


def test_both_contracts_are_kept(project: Path) -> None:
    """As the tree is: the client imports nothing of the server, the server nothing of the client."""
    result = lint_imports(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{CLIENT_CONTRACT} KEPT" in result.stdout
    assert f"{SERVER_CONTRACT} KEPT" in result.stdout


def test_the_client_importing_a_server_dependency_breaks_its_contract(project: Path) -> None:
    """msgspec (a server dependency) or a gateway module imported by the client: its contract is broken, by name."""
    append(project / "better_auth_gateway_client" / "identity.py", "import msgspec")
    append(project / "better_auth_gateway_client" / "protocol.py", "import gateway.core.sessions")
    result = lint_imports(project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{CLIENT_CONTRACT} BROKEN" in result.stdout
    assert "better_auth_gateway_client.identity -> msgspec" in result.stdout
    assert "better_auth_gateway_client.protocol -> gateway.core.sessions" in result.stdout


def test_the_server_importing_the_client_breaks_its_contract(project: Path) -> None:
    """A server module importing the client breaks the other contract."""
    append(project / "gateway" / "http" / "api.py", "import better_auth_gateway_client.identity")
    result = lint_imports(project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{SERVER_CONTRACT} BROKEN" in result.stdout
    assert "gateway.http.api -> better_auth_gateway_client.identity" in result.stdout


def test_no_client_module_is_over_the_size_budget() -> None:
    """No module of the client has more than 250 nonblank lines (the style's budget, as for gateway/)."""
    package = ROOT / "clients" / "python" / "src" / "better_auth_gateway_client"
    sizes = {
        path.name: sum(1 for line in path.read_text().splitlines() if line.strip()) for path in package.glob("*.py")
    }
    assert len(sizes) > 5
    assert {name: n for name, n in sizes.items() if n > 250} == {}
