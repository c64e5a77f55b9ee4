"""The CLI's shape: one module per command group over shared targets and output, layered one way."""

from __future__ import annotations

import ast
from pathlib import Path

import semcache.cli

CLI = Path(semcache.cli.__file__).parent
SHARED = {"output": set(), "targets": {"output"}, "options": {"targets"}}


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in CLI.glob("*.py") if p.stem != "__init__"}


def _cli_imports(tree: ast.Module) -> set[str]:
    """The CLI modules a module imports (``from .x import`` or ``semcache.cli.x``)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 0 and (node.module or "").startswith("semcache.cli."):
                out.add(node.module.split(".")[2])  # type: ignore[union-attr]
    return out


def test_imports_flow_one_way():
    modules = _modules()
    for name, tree in modules.items():
        imported = _cli_imports(tree)
        assert imported <= set(modules), (name, imported)
        if name in SHARED:
            assert imported == SHARED[name], (name, imported)
        elif name != "main":  # a command group uses the shared modules, never another group
            assert imported <= set(SHARED), (name, imported)
    assert all("main" not in _cli_imports(t) for n, t in modules.items() if n != "main")


def test_modules_stay_small():
    for p in CLI.glob("*.py"):
        assert len(p.read_text().splitlines()) <= 500, p.name
    assert len((CLI / "main.py").read_text().splitlines()) <= 150


def test_no_private_reach_into_the_cache():
    """Commands use the caches' public API: no ``.sync``, no ``obj._private`` but on ``self``."""
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            assert node.attr != "sync", (name, node.lineno)
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
            assert not private or on_self, (name, node.lineno, node.attr)


def test_serve_runs_the_server_from_the_server_package():
    import semcache.cli.main as cli_main
    from semcache.server.run import run_server

    assert callable(run_server) and not hasattr(cli_main, "run_server")
