"""Every file and section that the docs and the code's docstrings and comments refer to exists.

Read: README.md, docs/*.md, every file under src/, and the docstrings and
comments of the Python files under tests/ and bench/ (their code's strings name
the tests' own scratch files). Checked:

* a mention of a markdown file (``docs/hangs.md``, ``hangs.md`` from a doc,
  ``DESIGN.md``): the file is in the repository (at the root, in docs/, or
  next to the doc that names it);
* a section named after it (``docs/rendezvous.md, "Silence"``, ``STYLE.md §8``):
  the file has a heading that holds that text (or is numbered so);
* a markdown link ``[text](path#anchor)`` of a doc: the path exists, and the
  anchor is the GitHub slug of one of the target's headings;
* a Python file (``store/tcp/peer.py``, ``src/corral/store/api.py``,
  ``races.py``, ``module.py:123``): the file is in the repository (a bare name:
  some file of that name; a line number: the file has that many lines). Paths
  outside the repository (``torch/...``, ``/job/train.py``) are not checked.

The agent's files (src/corral/agent/) belong to another branch of issue 24:
their false references are listed by a test of their own.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "corral"
# read for their docstrings and comments only; this file quotes false references on purpose
PROSE_ONLY = (ROOT / "tests", ROOT / "bench")
CHECKER = Path(__file__).resolve()
# top-level parts a relative .py path may start with (else it is someone else's file)
_TOP = {"src", "tests", "bench", "examples", "docs", "corral"} | {
    p.name for p in SRC.iterdir() if p.is_dir() or p.suffix == ".py"
}

# bare names of files that are not the repository's: the user's script in the docs'
# examples, a test's scratch script in the command line it quotes, torch's
# torch/distributed/run.py
USER_FILES = {"train.py", "w.py", "run.py"}

_MD = re.compile(
    r"(?<![\w/.\-])((?:[\w.\-]+/)*[\w\-]+\.md)(?![\w/])"
    r"(?:(?:,|``)?\s*(?:\"([^\"\n]+)\"|§\s*(\d+)|section\s+(\d+)))?"
)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_PY = re.compile(r"(?<![\w/.\-~])((?:[\w\-]+/)*\w+\.py)(?::(\d+))?(?![\w/])")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


@dataclass(frozen=True)
class Ref:
    where: str  # file:line
    text: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text!r}: {self.problem}"


def _sources() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted(p for p in SRC.rglob("*.py"))
    for top in PROSE_ONLY:
        files += sorted(p for p in top.rglob("*.py") if p != CHECKER)
    return files


def _prose(text: str) -> dict[int, str]:
    """line number -> the docstring and comment text on that line of Python source ``text``."""
    lines = text.splitlines()
    out: dict[int, str] = {}
    for node in ast.walk(ast.parse(text)):
        if (
            not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            or ast.get_docstring(node, clean=False) is None
        ):
            continue
        doc = node.body[0]
        assert doc.end_lineno is not None
        for n in range(doc.lineno, doc.end_lineno + 1):
            out[n] = lines[n - 1]
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            n = tok.start[0]
            out[n] = out.get(n, "") + " " + tok.string
    return out


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py" and any(path.is_relative_to(top) for top in PROSE_ONLY):
        yield from sorted(_prose(text).items())
    else:
        yield from enumerate(text.splitlines(), 1)


@cache
def _headings(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # no headings in code blocks
    return [h.strip() for h in _HEADING.findall(text)]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _plain(heading: str) -> str:
    return re.sub(r"[`*_]", "", heading).lower()


def _find_md(name: str, near: Path) -> Path | None:
    for base in (near.parent, ROOT, ROOT / "docs"):
        p = (base / name).resolve()
        if p.is_file():
            return p
    return None


@cache
def _by_name() -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for top in ("src", "tests", "bench", "examples"):
        for p in (ROOT / top).rglob("*.py"):
            out.setdefault(p.name, []).append(p)
    return out


def _find_py(ref: str) -> Path | bool | None:
    """The file ``ref`` names; None if missing; False if it is not ours to check."""
    parts = ref.split("/")
    if ref in USER_FILES:
        return False
    if len(parts) == 1:
        found = _by_name().get(ref)
        return found[0] if found else None
    if parts[0] not in _TOP:
        return False
    for base in (ROOT, ROOT / "src", SRC):
        p = base / ref
        if p.is_file():
            return p
    return None


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def _check(path: Path) -> Iterator[Ref]:
    rel = path.relative_to(ROOT)
    is_md = path.suffix == ".md"
    for lineno, line in _text_lines(path):
        where = f"{rel}:{lineno}"
        if "http://" in line or "https://" in line:
            line = re.sub(r"https?://\S+", "", line)
        for m in _MD.finditer(line):
            name, section, num, num2 = m.group(1), m.group(2), m.group(3), m.group(4)
            target = _find_md(name, path)
            if target is None:
                yield Ref(where, m.group(0), "no such file in the repository")
                continue
            if section is not None:
                if not any(_plain(section) in _plain(h) for h in _headings(target)):
                    yield Ref(where, m.group(0), f"{name} has no section {section!r}")
            number = num or num2
            if number is not None:
                if not any(re.match(rf"{number}\b", _plain(h)) for h in _headings(target)):
                    yield Ref(where, m.group(0), f"{name} has no section {number}")
        if is_md:
            for m in _LINK.finditer(line):
                target_s = m.group(1)
                if re.match(r"[a-z]+:", target_s):
                    continue
                file_part, _, anchor = target_s.partition("#")
                target = (path.parent / file_part).resolve() if file_part else path
                if not target.exists():
                    yield Ref(where, target_s, "the link's file does not exist")
                    continue
                if anchor and target.suffix == ".md":
                    if anchor not in {_slug(h) for h in _headings(target)}:
                        yield Ref(where, target_s, f"no heading of {target.name} has #{anchor}")
        for m in _PY.finditer(line):
            found = _find_py(m.group(1))
            if isinstance(found, bool):  # not ours to check
                continue
            if found is None:
                yield Ref(where, m.group(0), "no such Python file in the repository")
            elif m.group(2) is not None and int(m.group(2)) > _lines(found):
                yield Ref(where, m.group(0), f"{found.name} has {_lines(found)} lines")


def test_docs_and_code_refer_only_to_files_and_sections_that_exist() -> None:
    bad = [ref for path in _sources() for ref in _check(path)]
    assert not bad, "false references:\n" + "\n".join(map(str, bad))


def test_the_checker_finds_false_references(tmp_path: Path) -> None:
    doc = ROOT / "docs" / "design.md"
    assert _find_md("docs/design.md", SRC / "x.py") == doc
    assert _find_md("NOWHERE.md", doc) is None
    assert _find_py("store/tcp/peer.py") == SRC / "store" / "tcp" / "peer.py"
    assert _find_py("torch/distributed/run.py") is False
    assert _find_py("no_such_module_here.py") is None
    assert _slug("Pre-started workers (`--prestart`, the default)") == (
        "pre-started-workers---prestart-the-default"
    )
    fake = ROOT / "docs" / "__probe__.md"
    try:
        fake.write_text(
            'See STYLE.md §8, docs/design.md, "No such section here", [x](hangs.md#nope),\n'
            "store/tcp/peer.py:999999 and store/nothing.py.\n"
        )
        problems = [r.problem for r in _check(fake)]
    finally:
        fake.unlink()
    assert problems == [
        "no such file in the repository",
        "docs/design.md has no section 'No such section here'",
        "no heading of hangs.md has #nope",
        f"peer.py has {_lines(SRC / 'store' / 'tcp' / 'peer.py')} lines",
        "no such Python file in the repository",
    ], problems


def test_tests_and_bench_are_read_for_their_docstrings_and_comments_only() -> None:
    source = (
        '"""See NOWHERE.md."""\n'
        'x = "scratch.py"  # and GONE.md\n'
        "def f() -> None:\n"
        '    """Also here.md."""\n'
        '    y = "not read.md"\n'
    )
    assert _prose(source) == {
        1: '"""See NOWHERE.md."""',
        2: " # and GONE.md",
        4: '    """Also here.md."""',
    }
