"""DuckDB extensions loaded from installed Python packages, never downloaded.

DuckDB fetches ``ducklake`` and ``postgres_scanner`` from its extension site the first time
they are used; selfevo runs where only package registries are reachable. The packages
``duckdb-extension-ducklake`` and ``duckdb-extension-postgres-scanner`` (extra "teams")
carry the signed binaries under ``<package>/extensions/v<duckdb version>/<name>.duckdb_extension``;
:func:`load_extension` LOADs that file by path, on a connection opened with
:func:`offline_config`, so nothing is installed into ``~/.duckdb`` and nothing is fetched.
A binary loads only into the DuckDB release it was built for, hence the exact ``duckdb`` pin.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import duckdb

from corpus.errors import CorpusError
from corpus.storespec import sql_literal
from schemas.install import install_hint


@dataclass(frozen=True)
class Extension:
    """A DuckDB extension and the Python package (distribution name) that ships it."""

    name: str     # DuckDB's name, e.g. 'postgres_scanner'
    package: str  # pip name, e.g. 'duckdb-extension-postgres-scanner'

    @property
    def module(self) -> str:
        """The import name of the package."""
        return self.package.replace("-", "_")


DUCKLAKE = Extension("ducklake", "duckdb-extension-ducklake")
POSTGRES = Extension("postgres_scanner", "duckdb-extension-postgres-scanner")


class MissingExtension(CorpusError):
    """An extension's package is not installed, or was built for another DuckDB."""


def offline_config() -> dict[str, str | bool]:
    """``duckdb.connect(config=…)`` settings under which DuckDB never downloads an extension."""
    return {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
    }


def extension_file(ext: Extension, version: str | None = None) -> Path:
    """The ``.duckdb_extension`` file of ``ext`` for this DuckDB (``version`` like '1.5.5')."""
    version = version or duckdb.__version__
    spec = importlib.util.find_spec(ext.module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtension(
            f"the DuckDB extension '{ext.name}' is not installed: {install_hint(ext.package)} "
            f"(it is the package {ext.package}=={version})")
    root = Path(next(iter(spec.submodule_search_locations))) / "extensions"
    path = root / f"v{version}" / f"{ext.name}.duckdb_extension"
    if path.is_file():
        return path
    built = sorted(p.parent.name for p in root.glob(f"*/{ext.name}.duckdb_extension"))
    raise MissingExtension(
        f"{ext.package} has the '{ext.name}' extension for {', '.join(built) or 'no DuckDB'}, "
        f"not for DuckDB v{version}: pip install {ext.package}=={version}")


def loaded(con: duckdb.DuckDBPyConnection, ext: Extension) -> bool:
    """Whether ``ext`` is already loaded into ``con``'s database."""
    row = con.execute("SELECT loaded FROM duckdb_extensions() WHERE extension_name = "
                      + sql_literal(ext.name)).fetchone()
    return bool(row and row[0])


def load_extension(con: duckdb.DuckDBPyConnection, ext: Extension) -> None:
    """LOAD ``ext`` into ``con`` from its package (a no-op when it is loaded already)."""
    if loaded(con, ext):
        return
    path = extension_file(ext)
    try:
        con.execute(f"LOAD {sql_literal(path.as_posix())}")
    except duckdb.Error as exc:
        raise MissingExtension(
            f"cannot load {ext.name} from {path}: {str(exc).splitlines()[0]}") from None
