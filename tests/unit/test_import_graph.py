"""No import cycle in corral: not between modules, and not between the children of any package.

The graph is grimp's (import-linter's), without the imports under
``if TYPE_CHECKING:`` (they do not run). A cycle is printed as the modules (or
the sibling packages) that import each other, with one import of each edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

grimp = pytest.importorskip("grimp")


def _graph() -> object:
    return grimp.build_graph("corral", exclude_type_checking_imports=True)


def _cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _describe(comp: Iterable[str], edges: Mapping[str, set[str]]) -> str:
    members = set(comp)
    lines = [f"  {a} -> {b}" for a in sorted(members) for b in sorted(edges[a] & members)]
    return "cycle among " + ", ".join(sorted(members)) + ":\n" + "\n".join(lines)


def test_the_cycle_finder_finds_cycles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert "a -> b" in _describe(["a", "b", "c"], edges)


def test_no_cycle_between_modules() -> None:
    g = _graph()
    edges = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}  # type: ignore[attr-defined]
    found = _cycles(edges)
    assert not found, "\n".join(_describe(c, edges) for c in found)


def test_no_cycle_between_the_children_of_any_package() -> None:
    g = _graph()
    modules: set[str] = set(g.modules)  # type: ignore[attr-defined]
    packages = {m for m in modules if any(o.startswith(m + ".") for o in modules)}
    problems: list[str] = []
    for pkg in sorted(packages):
        depth = pkg.count(".") + 1

        def child(m: str, pkg: str = pkg, depth: int = depth) -> str | None:
            if not m.startswith(pkg + "."):
                return None
            return ".".join(m.split(".")[: depth + 1])

        edges: dict[str, set[str]] = {}
        for m in modules:
            a = child(m)
            if a is None:
                continue
            for imported in g.find_modules_directly_imported_by(m):  # type: ignore[attr-defined]
                b = child(imported)
                if b is not None and b != a:
                    edges.setdefault(a, set()).add(b)
        problems += [f"in {pkg}: " + _describe(c, edges) for c in _cycles(edges)]
    assert not problems, "\n".join(problems)
