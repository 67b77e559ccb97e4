"""The package layering: dependencies point down, checked on every import in the code.

    schemas  <-  corpus  <-  curation  <-  generation  <-  selfevo
    schemas  <-  trainer  (reads exports only; never the store)

An import inside a function counts the same as one at the top: lazy is not a loophole.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: package -> the packages it may import (besides itself).
ALLOWED = {
    "schemas": set(),
    "corpus": {"schemas"},
    "curation": {"schemas", "corpus"},
    "generation": {"schemas", "corpus", "curation"},
    "trainer": {"schemas"},
    "selfevo": {"schemas", "corpus", "curation", "generation", "trainer"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every import statement in ``path`` that names ours."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in ALLOWED:
                out.add((top, node.lineno))
    return out


def test_dependencies_point_down():
    violations = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for top, line in imported_packages(path):
                if top != package and top not in allowed:
                    violations.append(f"{path.relative_to(REPO)}:{line} imports {top}")
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_generation_is_not_in_curation():
    """Curation cleans data that exists: no model backend, template, ledger or teacher in it."""
    for path in (REPO / "curation").rglob("*.py"):
        text = path.read_text("utf-8")
        for word in ("ChatRequest", "Ledger(", "get_template(", "load_backend("):
            assert word not in text, f"{path.relative_to(REPO)} uses {word}"
