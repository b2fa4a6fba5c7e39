"""Two rules of the layout that neither ruff nor import-linter checks (run by ``scripts/check``).

- **Size**: no module of ``gateway/`` has more than ``MAX_NONBLANK`` nonblank lines (the style's
  budget: one concern per module).
- **No import cycle** between gateway's modules, at any depth. import-linter's ``layers``
  contract orders the packages but says nothing about the modules inside one (``cli.main`` and
  ``cli.demo`` importing each other passes it). Imports under ``if TYPE_CHECKING:`` do not count:
  they are how the style breaks a cycle that exists only for the type checker.

Prints every breach, with the import lines that close each cycle, and exits 1 if there is one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "gateway"
MAX_NONBLANK = 250


def nonblank_lines(path: Path) -> int:
    """The number of lines of ``path`` holding something other than whitespace."""
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def oversized(root: Path = ROOT / PACKAGE, limit: int = MAX_NONBLANK) -> list[tuple[str, int]]:
    """``(path, nonblank lines)`` of every module under ``root`` above ``limit``, largest first."""
    sizes = [(path.relative_to(root.parent).as_posix(), nonblank_lines(path)) for path in root.rglob("*.py")]
    return sorted(((name, n) for name, n in sizes if n > limit), key=lambda item: -item[1])


def cycles(graph: grimp.ImportGraph, package: str = PACKAGE) -> list[list[str]]:
    """The import cycles among ``package``'s modules, each as its sorted set of members.

    A module is in a cycle with every module it imports (directly or not) that also imports it.
    """
    internal = {m for m in graph.modules if m == package or m.startswith(package + ".")}
    found = set()
    for module in internal:
        loop = graph.find_upstream_modules(module) & graph.find_downstream_modules(module) & internal
        if loop:
            found.add(tuple(sorted(loop | {module})))
    return [list(members) for members in sorted(found)]


def cycle_imports(graph: grimp.ImportGraph, component: list[str]) -> list[str]:
    """The import lines between the members of one cycle, as ``importer -> imported (l.N)``."""
    return [
        f"{importer} -> {imported} (l.{detail['line_number']})"
        for importer in component
        for imported in component
        for detail in graph.get_import_details(importer=importer, imported=imported)
    ]


def main() -> int:
    """Check both rules; print each breach; 1 if there was one."""
    failed = False
    for name, count in oversized():
        print(f"{name}: {count} nonblank lines (at most {MAX_NONBLANK})")
        failed = True
    sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph(PACKAGE, exclude_type_checking_imports=True)
    for component in cycles(graph):
        print(f"import cycle between {', '.join(component)}:")
        for line in cycle_imports(graph, component):
            print(f"  {line}")
        failed = True
    if not failed:
        print(f"modules: none over {MAX_NONBLANK} nonblank lines, no import cycle in {PACKAGE}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
