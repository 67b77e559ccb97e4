"""Running a store-level test on both back ends: a DuckDB file and a DuckLake on Postgres.

Decorate a test that takes the ``db`` fixture with :data:`both_stores`: it then runs once with
a fresh store file and once with a fresh DuckLake (a new Postgres database from the session's
server, Parquet under the test's tmp_path; ``conftest.lake_db``). The test body is the same:
every command takes either spec as ``--db``.
"""

from __future__ import annotations

import pytest

both_stores = pytest.mark.parametrize("db", ["file", "lake"], indirect=True)
