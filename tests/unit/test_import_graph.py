"""No import cycles between the read-through callers and the modules that build them.

The core imports the decorator (``cache.cached``), so the decorator and the
read-through must not import the core, at module level or lazily (only under
``TYPE_CHECKING``); the sidecar builds the proxy, so the proxy must not import the sidecar.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import semcache

ROOT = Path(semcache.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every semcache module ``path`` imports, anywhere but under ``if TYPE_CHECKING:``."""
    module = "semcache." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(0, node.level - 1)):
                base = base.rsplit(".", 1)[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m.startswith("semcache")}


def _files(*names: str) -> list[Path]:
    out: list[Path] = []
    for name in names:
        p = ROOT / name
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return out


@pytest.mark.parametrize("path", _files("decorator", "readthrough"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_decorator_and_read_through_never_import_the_core(path: Path) -> None:
    bad = {m for m in _imports(path) if m in ("semcache.cache", "semcache.async_cache")}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path", _files("server/proxy.py", "server/proxy_support.py"), ids=lambda p: p.name
)
def test_the_proxy_never_imports_the_sidecar(path: Path) -> None:
    bad = {m for m in _imports(path) if m.startswith("semcache.server.sidecar") or m.startswith("semcache.server.app")}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def _module_graph() -> dict[str, set[str]]:
    mods: dict[str, Path] = {}
    for p in ROOT.rglob("*.py"):
        name = "semcache." + ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    graph: dict[str, set[str]] = {}
    for name, p in mods.items():
        deps: set[str] = set()
        for d in _imports(p):
            while d and d not in mods:
                d = d.rsplit(".", 1)[0] if "." in d else ""
            if d and d != name:
                deps.add(d)
        graph[name] = deps
    return graph


def test_the_package_has_no_import_cycle_at_all() -> None:
    """No two modules import each other, directly or through others, at module level or
    lazily (only ``TYPE_CHECKING`` imports are exempt): each concept's imports flow one way."""
    graph = _module_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append(stack[stack.index(w) :] + [w])
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
