"""DuckDB extensions load from the installed packages and are never downloaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from corpus.extensions import (
    DUCKLAKE,
    POSTGRES,
    Extension,
    MissingExtension,
    extension_file,
    load_extension,
    loaded,
    offline_config,
)
from schemas.install import install_hint


def test_both_load_from_their_packages_without_installing(tmp_path: Path) -> None:
    ext_dir = tmp_path / "extension-dir"
    con = duckdb.connect(config=offline_config() | {"extension_directory": str(ext_dir)})
    for ext in (DUCKLAKE, POSTGRES):
        assert extension_file(ext).is_relative_to(Path(sys.prefix))
        load_extension(con, ext)
        load_extension(con, ext)  # a second load is a no-op
        assert loaded(con, ext)
    con.execute(f"ATTACH 'ducklake:{tmp_path}/c.ducklake' AS lake")
    con.execute("CREATE TABLE lake.t AS SELECT 1 AS i")
    assert con.execute("SELECT i FROM lake.t").fetchall() == [(1,)]
    rows = con.execute("SELECT extension_name, installed FROM duckdb_extensions() "
                       "WHERE extension_name IN ('ducklake', 'postgres_scanner')").fetchall()
    assert sorted(rows) == [("ducklake", False), ("postgres_scanner", False)]
    assert not ext_dir.exists()  # nothing was installed anywhere


def test_offline_config_never_downloads(tmp_path: Path) -> None:
    con = duckdb.connect(config=offline_config() | {"extension_directory": str(tmp_path)})
    for key in offline_config():
        assert con.execute(f"SELECT current_setting('{key}')").fetchone() == (False,)
    # Not loaded and not installed: DuckDB says so instead of fetching it.
    with pytest.raises(duckdb.IOException, match="not found") as err:
        con.execute(f"ATTACH 'ducklake:{tmp_path}/c.ducklake' AS lake")
    assert "download" not in str(err.value).lower()


def test_a_missing_package_is_named() -> None:
    absent = Extension("ducklake", "duckdb-extension-not-installed-here")
    with pytest.raises(MissingExtension) as err:
        extension_file(absent)
    assert "pip install duckdb-extension-not-installed-here" in str(err.value)
    # the real packages are declared by the teams extra, and the hint says so
    assert install_hint(DUCKLAKE.package).endswith("[teams]'")
    assert install_hint(POSTGRES.package) == install_hint(DUCKLAKE.package)


def test_a_package_for_another_duckdb_is_refused(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "duckdb_extension_quack"
    (pkg / "extensions" / "v0.9.0").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "extensions" / "v0.9.0" / "quack.duckdb_extension").write_bytes(b"\0")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtension) as err:
        extension_file(Extension("quack", "duckdb-extension-quack"))
    assert f"for v0.9.0, not for DuckDB v{duckdb.__version__}" in str(err.value)
    assert f"pip install duckdb-extension-quack=={duckdb.__version__}" in str(err.value)


def _network_namespace_available() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not _network_namespace_available(),
                    reason="needs 'unshare -n' (root on Linux) to cut the network off")
def test_a_postgres_lake_works_with_no_network_at_all(lake_db: str) -> None:
    # A process in a fresh network namespace (no interfaces): any download would fail. The
    # Postgres catalog is reached over its Unix socket, which a namespace does not cut.
    script = textwrap.dedent(f"""
        import duckdb
        from corpus.extensions import DUCKLAKE, POSTGRES, load_extension, offline_config
        from corpus.storespec import StoreSpec
        spec = StoreSpec.parse({lake_db!r})
        con = duckdb.connect(config=offline_config())
        load_extension(con, DUCKLAKE)
        load_extension(con, POSTGRES)
        con.execute(spec.attach_sql())
        con.execute("CREATE TABLE lake.t AS SELECT range AS i FROM range(1000)")
        print(con.execute("SELECT sum(i) FROM lake.t").fetchone()[0])
    """)
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", script], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "499500"
