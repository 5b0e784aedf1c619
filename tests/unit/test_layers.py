"""The shape of the house, checked: the pure modules import no I/O layer, the store decides
nothing, mail/ stays at the edge, and no module grows past what one person reads at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support.paths import REPO

PACKAGE = REPO / "nurture"
OUTER = ("nurture.db", "nurture.mail", "nurture.web", "nurture.daemon", "nurture.services")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


PURE = ["engine", "clicks", "tokens", "vocabulary", "durations", "clock", "errors"]


@pytest.mark.parametrize(
    "path",
    [PACKAGE / f"{m}.py" for m in PURE] + sorted((PACKAGE / "sequences").glob("*.py")),
    ids=name,
)
def test_the_pure_modules_import_no_database_mail_web_or_daemon(path: Path) -> None:
    bad = sorted(m for m in imported(path) if m.startswith(OUTER) or m.startswith("sqlalchemy"))
    assert bad == [], f"{name(path)} imports {bad}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "db").glob("*.py")), ids=name)
def test_the_store_imports_no_decision(path: Path) -> None:
    """Types of the engine (EnrollmentState) may be stored; its decisions are not called."""
    from nurture import engine

    decisions = {f"nurture.engine.{f}" for f in engine.__all__ if f[0].islower()}
    whole = {"nurture.journey", "nurture.engine.*"}
    bad = sorted(imported(path) & (decisions | whole))
    assert bad == [], f"{name(path)} imports {bad}"
    assert "from nurture import engine" not in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", sorted((PACKAGE / "mail").glob("*.py")), ids=name)
def test_mail_stays_at_the_edge(path: Path) -> None:
    inner = ("nurture.db", "nurture.tracking", "nurture.inbox", "nurture.journey", "nurture.web")
    bad = sorted(m for m in imported(path) if m.startswith(inner))
    assert bad == [], f"{name(path)} imports {bad}"


@pytest.mark.parametrize("path", modules(), ids=name)
def test_each_module_says_what_it_owns(path: Path) -> None:
    # No line count caps a module (CONVENTIONS: one concept per module, split when the
    # concept splits, not when a file grows): a cap split cli.py by size, into a circle.
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{name(path)} has no docstring"


def test_the_readme_module_table_lists_every_module() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = readme.split("| module | owns |", 1)[1].split("\n\n", 1)[0]
    missing = [
        str(p.relative_to(REPO))
        for p in modules()
        if p.name not in ("__init__.py", "__main__.py") and f"`{p.relative_to(REPO)}`" not in listed
    ]
    assert missing == [], f"README's module table lacks {missing}"
