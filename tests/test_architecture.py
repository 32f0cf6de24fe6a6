"""The layering rules of ``server/tapedeck`` (docs/ARCHITECTURE.md), checked on the source.

The import graph is read with ``ast`` (nothing is imported): an edge for every ``import``
or ``from ... import`` anywhere in a module, including under ``if TYPE_CHECKING:`` and inside
functions, plus the implicit edge from a submodule import to every package ``__init__`` on
its way (``import tapedeck.a.b`` runs ``tapedeck/a/__init__.py``). Function-level imports are
the one sanctioned way to break a dependency at run time, so the cycle check covers module
level and ``TYPE_CHECKING`` imports; see ``test_graph_reader_sees_every_kind_of_import``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "server"
PACKAGE = "tapedeck"
GENERATED = ("tapedeck.v1",)  # protoc output: imports only itself and protobuf


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported, or that a type checker follows: the
    module body, ``if``/``try`` blocks at module level (``TYPE_CHECKING`` included). Imports
    inside functions and classes are deliberately lazy and are not edges."""
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                stack.extend(handler.body)


def _resolve(name: str, node: ast.Import | ast.ImportFrom, modules: set[str],
             is_package: bool) -> set[str]:
    """Our modules an import statement of module ``name`` loads (with their packages)."""
    targets: list[str] = []
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = name.split(".") if is_package else name.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        targets = [base] + [f"{base}.{a.name}" for a in node.names]
    found: set[str] = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in modules:
                found.add(prefix)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the modules of ``tapedeck`` it imports at module level or for type checking."""
    paths = {module_name(p, root): p for p in (root / PACKAGE).rglob("*.py")}
    paths = {m: p for m, p in paths.items() if not m.startswith(GENERATED)}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        deps: set[str] = set()
        for node in _top_level_imports(tree):
            deps |= _resolve(name, node, modules, path.name == "__init__.py")
        # Being imported runs every enclosing package first.
        parts = name.split(".")
        deps |= {".".join(parts[:i]) for i in range(1, len(parts))}
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path that starts and ends at the same module), or None.
    Edges from a package to its own submodules through its parents are ignored: a package
    ``__init__`` importing its submodule is how packages re-export, and the submodule's
    implicit edge back to the package is not an import it wrote."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    stack: list[str] = []

    def edges(m: str) -> list[str]:
        return sorted(d for d in graph[m] if not m.startswith(d + "."))

    def visit(m: str) -> list[str] | None:
        color[m] = grey
        stack.append(m)
        for d in edges(m):
            if color[d] == grey:
                return [*stack[stack.index(d):], d]
            if color[d] == white and (cycle := visit(d)):
                return cycle
        stack.pop()
        color[m] = black
        return None

    for m in sorted(graph):
        if color[m] == white and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycle_in_server() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_domain_imports_private_domain_modules() -> None:
    graph = import_graph()
    offenders = sorted(
        f"{m} imports {d}" for m, deps in graph.items() if not m.startswith("tapedeck.domain")
        for d in deps if d.startswith("tapedeck.domain._"))
    # Lazy (function-level) imports count too here: privacy is not about load order.
    for path in (ROOT / PACKAGE).rglob("*.py"):
        name = module_name(path, ROOT)
        if name.startswith(("tapedeck.domain", *GENERATED)):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "tapedeck.domain._"):
                offenders.append(f"{name} imports {node.module}")
    assert not offenders, offenders


#: The modules that assemble a process and so may import ``tapedeck.app``; every other
#: module (roles and job handlers included) gets a ``tapedeck.runtime.Runtime`` instead.
APP_USERS = ("tapedeck.app", "tapedeck.cli", "tapedeck.__main__")
#: What ``tapedeck.runtime`` must not load, even indirectly: it is a leaf that roles import.
NOT_UNDER_RUNTIME = ("tapedeck.app", "tapedeck.cli", "tapedeck.domain", "tapedeck.grpc_api",
                     "tapedeck.gateway", "tapedeck.background", "tapedeck.webhooks",
                     "tapedeck.diarize", "tapedeck.admin")
#: The leaves every layer may import: they import no other package of ``tapedeck``.
LEAVES = ("tapedeck.clock", "tapedeck.errors", "tapedeck.ids", "tapedeck.settings")
#: Package → what it must never import (docs/ARCHITECTURE.md, "Layout"): infrastructure sits
#: below the domain, the domain below what runs it (roles, background work, assembly).
#: (``tapedeck.infra`` has the stricter allow-list of ``test_infrastructure_imports_only_leaves``.)
FORBIDDEN = {
    "tapedeck.domain": ("tapedeck.background", "tapedeck.gateway", "tapedeck.grpc_api",
                        "tapedeck.admin", "tapedeck.app", "tapedeck.cli"),
    "tapedeck.background": ("tapedeck.gateway", "tapedeck.grpc_api", "tapedeck.admin",
                            "tapedeck.app", "tapedeck.cli"),
    "tapedeck.admin": ("tapedeck.domain", "tapedeck.background", "tapedeck.gateway",
                       "tapedeck.grpc_api", "tapedeck.app", "tapedeck.cli"),
}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``FORBIDDEN`` edges of ``graph``, as "module imports module" lines."""
    return sorted(f"{m} imports {d}" for m, deps in graph.items() for pkg, banned in FORBIDDEN.items()
                  if m.startswith(pkg + ".") or m == pkg for d in deps if d.startswith(banned))


def test_layers_import_only_downwards() -> None:
    offenders = layer_violations(import_graph())
    assert not offenders, offenders


def test_layer_check_can_fail() -> None:
    graph = {"tapedeck.background.worker": {"tapedeck.clock", "tapedeck.grpc_api.server"},
             "tapedeck.domain.x": {"tapedeck.infra.db", "tapedeck.gateway.routes"}}
    assert layer_violations(graph) == [
        "tapedeck.background.worker imports tapedeck.grpc_api.server",
        "tapedeck.domain.x imports tapedeck.gateway.routes"]


def test_infrastructure_imports_only_leaves() -> None:
    graph = import_graph()
    outside = sorted({d for m, deps in graph.items() if m.startswith("tapedeck.infra.")
                      for d in deps if not d.startswith(("tapedeck.infra", *LEAVES))} - {PACKAGE})
    assert not outside, outside


def app_importers(graph: dict[str, set[str]]) -> list[str]:
    """Modules outside ``APP_USERS`` that import ``tapedeck.app`` at module level or under
    ``TYPE_CHECKING`` (the edges of ``import_graph``)."""
    return sorted(m for m, deps in graph.items() if "tapedeck.app" in deps and m not in APP_USERS)


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` loads, itself included."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    return seen


def test_only_the_assembly_imports_the_app() -> None:
    offenders = app_importers(import_graph())
    assert not offenders, f"import tapedeck.runtime.Runtime, not tapedeck.app: {offenders}"


def test_runtime_is_a_leaf() -> None:
    loaded = closure(import_graph(), "tapedeck.runtime")
    offenders = sorted(m for m in loaded if m.startswith(NOT_UNDER_RUNTIME))
    assert not offenders, offenders


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_graph_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checks can fail: a module-level, a relative, a ``TYPE_CHECKING`` and a
    package-``__init__`` cycle are each found; a function-level import is not an edge."""
    base = {"tapedeck/__init__.py": "", "tapedeck/pkg/__init__.py": ""}
    cases = {
        "from tapedeck import b\n": "import tapedeck.a\n",
        "from . import b\n": "from .a import x\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tapedeck.b import B\n":
            "from tapedeck.a import A\n",
    }
    for i, (a, b) in enumerate(cases.items()):
        root = tmp_path / str(i)
        _write(root, {**base, "tapedeck/a.py": a, "tapedeck/b.py": b})
        cycle = find_cycle(import_graph(root))
        assert cycle is not None and {"tapedeck.a", "tapedeck.b"} <= set(cycle), (i, cycle)
    root = tmp_path / "pkg"
    _write(root, {**base, "tapedeck/pkg/__init__.py": "import tapedeck.c\n",
                  "tapedeck/pkg/m.py": "", "tapedeck/c.py": "from tapedeck.pkg.m import x\n"})
    assert find_cycle(import_graph(root)) == ["tapedeck.c", "tapedeck.pkg", "tapedeck.c"]
    root = tmp_path / "lazy"
    _write(root, {**base, "tapedeck/a.py": "import tapedeck.b\n",
                  "tapedeck/b.py": "def f():\n    import tapedeck.a\n"})
    assert find_cycle(import_graph(root)) is None


@pytest.mark.parametrize("text", ["from tapedeck.domain._base import emit\n",
                                  "from tapedeck.domain import _base\n"])
def test_private_import_rule_can_fail(tmp_path: Path, text: str) -> None:
    _write(tmp_path, {"tapedeck/__init__.py": "", "tapedeck/domain/__init__.py": "",
                      "tapedeck/domain/_base.py": "", "tapedeck/x.py": text})
    graph = import_graph(tmp_path)
    assert "tapedeck.domain._base" in graph["tapedeck.x"]


@pytest.mark.parametrize("text", [
    "from tapedeck.app import App\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tapedeck.app import App\n",
])
def test_app_import_rule_can_fail(tmp_path: Path, text: str) -> None:
    """A role importing the ``App`` (at module level or for typing) is found; the assembly
    (``cli``) and a function-level import are not offenders."""
    _write(tmp_path, {"tapedeck/__init__.py": "", "tapedeck/app.py": "", "tapedeck/role.py": text,
                      "tapedeck/cli.py": text,
                      "tapedeck/lazy.py": "def f():\n    from tapedeck.app import App\n"})
    assert app_importers(import_graph(tmp_path)) == ["tapedeck.role"]
