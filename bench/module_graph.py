"""Print the import edges between the packages of `watcher/`, read from the source with `ast`.

    .venv/bin/python bench/module_graph.py             # package -> packages it imports
    .venv/bin/python bench/module_graph.py --modules   # module -> modules, across packages
    .venv/bin/python bench/module_graph.py --dot | dot -Tsvg > graph.svg

A package is a folder under `watcher/` (`engine`, `cbr`, ...); a top-level module
(`clock`, `redaction`, ...) stands for itself. Imports under `if TYPE_CHECKING:` count too:
they are dependencies of the code's meaning, if not of its start-up. Packages that import each
other in a cycle are listed on stderr with the module imports that close it; `--check` makes
that exit 1.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "watcher"


def module_name(path: Path) -> str:
    """`watcher/engine/poll.py` -> `watcher.engine.poll`; `__init__.py` names its package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every `watcher...` module named by an import in `tree` (relative imports resolved)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                keep = len(base) - node.level + (1 if is_package else 0)
                prefix = ".".join(base[:keep])
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            yield target
            # `from watcher.engine import schedule` imports the module `schedule`.
            yield from (f"{target}.{alias.name}" for alias in node.names)


def owner(module: str) -> str:
    """The package a module belongs to: `watcher.engine.poll` -> `engine`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def edges(*, modules: bool) -> dict[str, set[str]]:
    """source -> targets, for packages (default) or for modules across package lines."""
    paths = sorted((ROOT / PACKAGE).rglob("*.py"))
    known = {module_name(path) for path in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        source = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = {
            name
            for name in imported(tree, source, path.name == "__init__.py")
            if name in known and name != PACKAGE
        }
        if modules:
            graph.setdefault(source, set()).update(
                target for target in targets if owner(target) != owner(source)
            )
        elif source != PACKAGE:
            graph.setdefault(owner(source), set()).update(
                owner(target) for target in targets if owner(target) != owner(source)
            )
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main() -> int:
    """Print the graph; with --check, exit 1 when packages import each other in a cycle."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="module-level edges")
    parser.add_argument("--dot", action="store_true", help="Graphviz dot instead of text")
    parser.add_argument("--check", action="store_true", help="exit 1 on a package cycle")
    args = parser.parse_args()
    graph = edges(modules=args.modules)
    if args.modules:
        graph = {source: targets for source, targets in graph.items() if targets}
    if args.dot:
        print("digraph watcher {")
        for source in sorted(graph):
            for target in sorted(graph[source]):
                print(f'  "{source}" -> "{target}";')
        print("}")
    else:
        width = max(map(len, graph), default=0)
        for source in sorted(graph):
            print(f"{source:<{width}} -> {', '.join(sorted(graph[source])) or '-'}")
    found = cycles(edges(modules=False))
    by_module = edges(modules=True)
    for component in found:
        print("cycle: " + " <-> ".join(component), file=sys.stderr)
        for source in sorted(by_module):
            for target in sorted(by_module[source]):
                if owner(source) in component and owner(target) in component:
                    print(f"  {source} -> {target}", file=sys.stderr)
    return 1 if found and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
