"""Install hints that name the extra which really declares a package.

Every "X needs package P: pip install …" message is built here from the installed
distribution's own metadata (the extras of pyproject.toml), so a hint cannot drift from the
extras: ``install_hint("torch", "transformers")`` → ``pip install 'selfevo[train]'``.
"""

from __future__ import annotations

import re
from importlib import metadata

DISTRIBUTION = "selfevo"
#: Extras for developers, named only when no user-facing extra declares the package.
_LAST_RESORT = ("dev", "bench")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_extras() -> dict[str, set[str]]:
    """Package name → the extras that declare it (``""`` for a core dependency); empty when
    selfevo is not installed as a distribution (a bare source tree)."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return {}
    out: dict[str, set[str]] = {}
    for req in requires:
        name = _NAME.match(req.strip())
        if name:
            extra = _EXTRA.search(req)
            out.setdefault(_normal(name.group()), set()).add(extra.group(1) if extra else "")
    return out


def install_hint(*packages: str) -> str:
    """``pip install 'selfevo[EXTRA]'`` for the extra that declares all ``packages`` (the one
    with the fewest other packages when several do), else ``pip install P …`` for them."""
    declared = declared_extras()
    wanted = [_normal(p) for p in packages]
    common = set.intersection(*(declared.get(p, set()) for p in wanted)) if wanted else set()
    if "" in common or not common:  # core dependencies, or no single extra has them all
        return "pip install " + " ".join(packages)
    sizes = {e: sum(e in extras for extras in declared.values()) for e in common}
    best = min(common, key=lambda e: (e in _LAST_RESORT, sizes[e], e))
    return f"pip install '{DISTRIBUTION}[{best}]'"
