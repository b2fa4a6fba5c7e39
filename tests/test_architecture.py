"""The architecture holds: the import contract, module sizes, no cycles, mirrored tests, the README.

The README's "Layout" section is checked against the tree. Its format: the first fenced block
under ``## Layout``, one entry a line, ``<indent><name>   <description>``:

- the indent is two spaces a level; an entry lies inside the nearest entry above it that is
  indented less (which must be a directory); an entry with no indent is relative to the
  repository root;
- a name ending in ``/`` is a directory (a package under ``gateway/``), any other a file (a module);
- the description follows the name after white space (names hold none), and every entry below
  the top level has one;
- a name holding ``<`` or ``*`` is a pattern (``tests/<package>/``), not a path: it and the entries
  inside it are not checked.

For example::

    gateway/
      core/              the domain: no I/O
        errors.py        the exception tree
      resources.py       the one composition root
    tests/<package>/     tests mirror the packages

Every listed path exists, and the entries under ``gateway/`` are exactly its packages and modules
(``__init__.py`` and ``__main__.py`` aside).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "gateway"
MAX_NONBLANK = 250
UNLISTED = frozenset({"__init__.py", "__main__.py"})
LAYERS_CONTRACT = "layers: entry points > composition root > adapters > config > core"


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the ``gateway`` package under ``project``, with its ``pyproject.toml``."""
    script = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run(  # noqa: S603 - our own tool, fixed arguments
        [str(script), "--no-cache", "--no-logo", str(project / "pyproject.toml")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of ``gateway/`` and ``pyproject.toml`` that a test may break."""
    shutil.copytree(GATEWAY, tmp_path / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_import_contract_is_kept(project_copy: Path) -> None:
    """import-linter's contracts (pyproject.toml) hold for the tree as it is."""
    result = lint_imports(project_copy)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contract_breaks_when_the_core_imports_an_adapter(project_copy: Path) -> None:
    """A core module importing an adapter breaks the layers contract, which names the import."""
    lru = project_copy / "gateway" / "core" / "lru.py"
    lru.write_text(lru.read_text() + "\nimport gateway.redis.tier  # noqa: E402\n")
    result = lint_imports(project_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{LAYERS_CONTRACT} BROKEN" in result.stdout
    assert "gateway.core.lru -> gateway.redis.tier" in result.stdout


def nonblank_lines(path: Path) -> int:
    """The lines of ``path`` holding something other than whitespace."""
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def test_no_module_is_over_the_size_budget() -> None:
    """No module of gateway/ has more than 250 nonblank lines (the style's budget)."""
    sizes = {path.relative_to(ROOT).as_posix(): nonblank_lines(path) for path in GATEWAY.rglob("*.py")}
    over = {name: n for name, n in sizes.items() if n > MAX_NONBLANK}
    assert over == {}, f"nonblank lines over {MAX_NONBLANK}: {over}"


def test_no_import_cycle() -> None:
    """No two of gateway's modules import each other, directly or not (TYPE_CHECKING aside)."""
    graph = grimp.build_graph("gateway", exclude_type_checking_imports=True)
    in_cycles = {
        module: sorted(graph.find_upstream_modules(module) & graph.find_downstream_modules(module))
        for module in graph.modules
    }
    cycles = {module: loop for module, loop in in_cycles.items() if loop}
    assert cycles == {}, f"modules in an import cycle (each with the others in its cycle): {cycles}"


def packages() -> list[Path]:
    """Every package under gateway/ (relative to it), gateway itself aside."""
    return sorted(init.parent.relative_to(GATEWAY) for init in GATEWAY.rglob("*/__init__.py"))


def test_the_tree_has_packages() -> None:
    """The package walk finds the packages (else the mirrored-tests test would check nothing)."""
    assert Path("core") in packages()
    assert Path("http") in packages()


@pytest.mark.parametrize("package", packages(), ids=str)
def test_every_package_has_mirrored_tests(package: Path) -> None:
    """tests/<package>/ exists and holds a test module with at least one test."""
    folder = ROOT / "tests" / package
    assert folder.is_dir(), f"no {folder.relative_to(ROOT)}/ for gateway/{package}/"
    with_tests = [path for path in folder.glob("test_*.py") if "def test_" in path.read_text(encoding="utf-8")]
    assert with_tests, f"no test module with a test in {folder.relative_to(ROOT)}/"


def layout_block(readme: str) -> list[str]:
    """The lines of the first fenced block in the README's "## Layout" section."""
    section = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    assert section, 'the README has no "## Layout" section'
    block = re.search(r"^```[^\n]*\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    assert block, 'the README\'s "## Layout" section has no fenced block'
    return block.group(1).splitlines()


def layout_entries(lines: list[str]) -> dict[str, str]:
    """``{path relative to the root: description}`` for every entry of the layout block.

    Paths of directories end in ``/``; entries inside a pattern are left out (see the module
    docstring for the format).
    """
    entries: dict[str, str] = {}
    parents: list[tuple[int, str]] = []  # (indent, path) of the directories enclosing the line
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"indent not a multiple of two spaces: {line!r}"
        name, _, description = line.strip().partition(" ")
        while parents and parents[-1][0] >= indent:
            parents.pop()
        assert indent == 0 or parents, f"indented, but inside no directory: {line!r}"
        parent = parents[-1][1] if parents else ""
        assert parent.endswith("/") or not parent, f"inside a file: {line!r}"
        path = parent + name
        if name.endswith("/"):
            parents.append((indent, path))
        if any(mark in path for mark in "<*"):
            continue
        assert indent == 0 or description.strip(), f"no description: {line!r}"
        entries[path] = description.strip()
    return entries


def tree() -> set[str]:
    """gateway/'s packages (``gateway/x/``) and modules (``gateway/x/y.py``), as the layout names them."""
    found = {"gateway/"}
    for path in GATEWAY.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        if path.name == "__init__.py":
            found.add(path.parent.relative_to(ROOT).as_posix() + "/")
        elif path.name not in UNLISTED:
            found.add(path.relative_to(ROOT).as_posix())
    return found


def test_layout_format_is_read_as_documented() -> None:
    """The layout reader nests by indent, skips patterns and keeps descriptions."""
    lines = [
        "gateway/",
        "  core/          the domain",
        "    errors.py    the exception tree",
        "  resources.py   the composition root",
        "tests/<package>/  tests mirror the packages",
        "  test_x.py      inside a pattern",
        "docs/",
    ]
    assert layout_entries(lines) == {
        "gateway/": "",
        "gateway/core/": "the domain",
        "gateway/core/errors.py": "the exception tree",
        "gateway/resources.py": "the composition root",
        "docs/": "",
    }


def test_readme_layout_matches_the_tree() -> None:
    """The README's Layout lists exactly gateway's packages and modules, and only paths that exist."""
    entries = layout_entries(layout_block((ROOT / "README.md").read_text(encoding="utf-8")))
    missing_paths = sorted(
        path for path in entries if not ((ROOT / path).is_dir() if path.endswith("/") else (ROOT / path).is_file())
    )
    assert missing_paths == [], f"listed in the README's Layout, but not in the tree: {missing_paths}"
    listed = {path for path in entries if path.startswith("gateway/")}
    unlisted = sorted(tree() - listed)
    assert unlisted == [], f"in the tree, but not in the README's Layout: {unlisted}"
    extra = sorted(listed - tree())
    assert extra == [], f"listed under gateway/, but not a package or module: {extra}"


CITED_ROOTS = ("gateway", "tests", "examples", "benchmarks", "loadtests", "scripts", "docs")
CITED_FILES = ("README.md", "SECURITY.md", "CHANGELOG.md", "Dockerfile", "pyproject.toml")
OUTSIDE = re.compile(r"\breference/[\w-]+\.md\b")  # the notes the first sessions wrote, not in the repository
INSIDE = re.compile(r"(?<![\w/.-])docs/[\w-]+\.md\b")


def cited_texts() -> dict[str, str]:
    """``{path: text}`` of every text file whose comments or prose may cite a document."""
    paths = [ROOT / name for name in CITED_FILES if (ROOT / name).is_file()]
    for root in CITED_ROOTS:
        paths += [
            path
            for path in (ROOT / root).rglob("*")
            if path.is_file()
            and not {"node_modules", "__pycache__", "results"} & set(path.parts)
            and path.suffix in {".py", ".md", ".toml", ".conf", ".yml", ".yaml", ".sh", ".mjs", ""}
        ]
    return {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8", errors="replace") for path in paths}


def test_citations_stay_in_the_repository() -> None:
    """No comment or document cites a note outside the repository; every docs/ page cited exists."""
    texts = cited_texts()
    outside = {path: OUTSIDE.findall(text) for path, text in texts.items() if OUTSIDE.search(text)}
    assert outside == {}, f"citations of notes outside the repository (write them into docs/): {outside}"
    cited = {page for text in texts.values() for page in INSIDE.findall(text)}
    assert "docs/better-auth.md" in cited
    missing = sorted(page for page in cited if not (ROOT / page).is_file())
    assert missing == [], f"cited, but not in docs/: {missing}"
