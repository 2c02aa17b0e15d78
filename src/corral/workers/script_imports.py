"""Which ``--prestart-import`` modules a worker's entrypoint will import, read from its source.

Pre-importing pays only for the modules the worker imports itself: for the
others it costs a standby's CPU and memory, and a first attempt that waited
for it would launch later than a fresh spawn. :func:`scan_imports` reads the
script (or the ``-m`` module) with :mod:`ast`, without running or importing
anything, and follows the modules it imports that live beside it (the
directory that will be ``sys.path[0]``, and ``PYTHONPATH``), up to
:data:`MAX_FILES` files. A third-party module that is installed counts as
importing a candidate when its distribution requires the candidate's
(``lightning`` requires ``torch``), read from the installed metadata.

The answer is either conclusive (the modules found) or not (a source that
cannot be read or parsed): the caller then keeps the configured list but does
not make the first attempt wait for it (docs/workers.md).
"""

from __future__ import annotations

import ast
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["MAX_FILES", "Scan", "scan_imports"]

log = logging.getLogger(__name__)

#: Local source files read at most (the script and the modules beside it).
MAX_FILES = 64


@dataclass(frozen=True)
class Scan:
    """What the scan found.

    Attributes:
        imports: the candidates the worker will import (in the candidates' order).
        conclusive: False when a source could not be read or parsed.
    """

    imports: tuple[str, ...]
    conclusive: bool


def _imported_names(tree: ast.AST, package: str) -> set[str]:
    """Absolute names of every module ``tree`` imports, at any depth (functions too)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the module's package
                parts = package.split(".") if package else []
                base_parts = parts[: len(parts) - node.level + 1] if node.level > 1 else parts
                base = ".".join(p for p in base_parts if p)
                mod = f"{base}.{node.module}" if node.module and base else node.module or base
            else:
                mod = node.module or ""
            if mod:
                names.add(mod)
                names.update(f"{mod}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call):  # importlib.import_module("x") / __import__("x")
            func = node.func
            fname = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else ""
            )
            if fname in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
    return names


def _local_file(name: str, roots: Sequence[str]) -> str | None:
    """The source file of module ``name`` under one of ``roots`` (no import), or None."""
    parts = name.split(".")
    for root in roots:
        base = os.path.join(root, *parts)
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
    return None


def _loaded_package_file(name: str) -> str | None:
    """The source of ``name`` when its top-level package is loaded here already.

    Finding a submodule imports its parents; that is done only when they are
    loaded already (``corral.workers._fn_entry``), never for a package the
    launcher does not import itself (torch).
    """
    if name.partition(".")[0] not in sys.modules:
        return None
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    return origin if origin is not None and origin.endswith(".py") else None


def _covers(imported: str, candidate: str) -> bool:
    """Importing ``imported`` imports ``candidate`` (itself, or one of its parents)."""
    return imported == candidate or imported.startswith(candidate + ".")


_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _third_party_requires(tops: Iterable[str], wanted: set[str]) -> set[str]:
    """Of the distributions providing ``tops``, which top-level ``wanted`` names they require."""
    import importlib.metadata as md

    try:
        providers = md.packages_distributions()
    except Exception:  # a broken installation: no help from the metadata
        return set()
    found: set[str] = set()
    for top in tops:
        for dist in providers.get(top, ()):
            try:
                reqs = md.requires(dist) or []
            except md.PackageNotFoundError:
                continue
            for req in reqs:
                if "extra ==" in req or "extra==" in req:
                    continue  # an optional extra: not what a plain install imports
                m = _REQ_NAME.match(req)
                if m is not None:
                    name = m.group(1).lower().replace("-", "_")
                    if name in wanted:
                        found.add(name)
    return found


def scan_imports(
    mode: str,
    entry: str,
    path0: str,
    candidates: Sequence[str],
    *,
    extra_roots: Sequence[str] = (),
) -> Scan:
    """The ``candidates`` that a worker running ``entry`` will import.

    Args:
        mode: ``script``, ``module`` or ``run_path`` (as :class:`PrestartPlan`).
        entry: the script path, or the module name for ``module``.
        path0: the worker's ``sys.path[0]`` (for ``run_path``: the cwd is used).
        candidates: the ``--prestart-import`` modules.
        extra_roots: more directories where the worker finds local modules
            (``PYTHONPATH``).

    Returns:
        A :class:`Scan`. A candidate counts when the sources import its
        top-level package (or anything under it), or an installed third-party
        module whose distribution requires that package.
    """
    if not candidates:
        return Scan((), True)
    roots = [r for r in (path0 or os.getcwd(), *extra_roots) if r]
    if mode == "module":
        first = _local_file(entry, roots) or _loaded_package_file(entry)
        if first is None:  # an installed module: not ours to import to find it
            return Scan(tuple(candidates), False)
        start = [(first, entry)]
        if first.endswith("__init__.py"):  # -m on a package runs its __main__ too
            main = _local_file(entry + ".__main__", roots) or _loaded_package_file(
                entry + ".__main__"
            )
            if main is not None:
                start.append((main, entry + ".__main__"))
    else:
        start = [(os.path.abspath(entry), "")]
    seen: set[str] = set()
    imported: set[str] = set()
    todo = list(start)
    conclusive = True
    while todo and len(seen) < MAX_FILES:
        path, modname = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        try:
            with open(path, "rb") as f:
                tree = ast.parse(f.read(), filename=path)
        except (OSError, SyntaxError, ValueError) as exc:
            log.debug("prestart: cannot read %s (%s)", path, exc)
            conclusive = False
            continue
        package = modname if path.endswith("__init__.py") else modname.rpartition(".")[0]
        for name in _imported_names(tree, package):
            if name in imported:
                continue
            imported.add(name)
            local = _local_file(name, roots)
            if local is not None and local not in seen:
                todo.append((local, name))
    if todo:
        conclusive = False  # more files than we read
    stdlib: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    tops = {n.split(".")[0] for n in imported}
    wanted = {c.split(".")[0] for c in candidates}
    third = {
        t
        for t in tops
        if t not in stdlib and t not in wanted and _local_file(t, roots) is None and t != "corral"
    }
    # the metadata scan reads every installed distribution: only for what is still missing
    missing = wanted - tops
    required = _third_party_requires(third, missing) if third and missing else set()
    # A submodule counts with its package: ``import torch`` brings torch.optim, and
    # the first optimizer step torch._dynamo, without an import statement naming them.
    found = [
        cand
        for cand in candidates
        if cand.split(".")[0] in required or any(_covers(n, cand.split(".")[0]) for n in imported)
    ]
    return Scan(tuple(found), conclusive)
