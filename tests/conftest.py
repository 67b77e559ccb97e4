"""Shared fixtures: a temp store per test and a CLI runner that shows errors."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

# Nothing may be fetched from a hub during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(request, tmp_path: Path) -> str:
    """Path of a fresh (not yet created) store file; parametrised with ``lake`` (see
    ``tests/backends.py``, ``both_stores``) the spec of a new DuckLake on Postgres instead.
    ``SELFEVO_TEST_STORE=lake`` makes the lake the default for every test that takes ``db``
    (``make test-lake``: the whole suite's store-level tests on DuckLake), except in tests
    marked ``file_store`` (see ``backends.file_store``)."""
    backend = _test_store()
    if request.node.get_closest_marker("file_store") is not None:
        backend = "file"
    if getattr(request, "param", backend) == "lake":
        return request.getfixturevalue("lake_db")
    return str(tmp_path / "test.duckdb")


def _test_store() -> str:
    """The back end of the ``db`` fixture by default: ``$SELFEVO_TEST_STORE``, file or lake."""
    backend = os.environ.get("SELFEVO_TEST_STORE", "file")
    if backend not in ("file", "lake"):
        raise pytest.UsageError(f"SELFEVO_TEST_STORE={backend!r}: use file or lake")
    return backend


def pytest_collection_modifyitems(config, items):
    """Under ``SELFEVO_TEST_STORE=lake`` (``make test-lake``) only the store-level tests run:
    those that take ``db``, each on a new lake; the rest do not depend on the back end, a
    ``both_stores`` test's file variant runs in ``make test``, and a ``file_store`` test is
    about the file itself."""
    if _test_store() == "file":
        return
    keep, drop = [], []
    for item in items:
        param = getattr(getattr(item, "callspec", None), "params", {}).get("db")
        on_lake = ("db" in getattr(item, "fixturenames", ()) and param in (None, "lake")
                   and item.get_closest_marker("file_store") is None)
        (keep if on_lake else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def cli():
    """``cli(*args, exit_code=0)`` runs ``selfevo`` in-process and checks the exit code."""
    from selfevo.cli import cli as root

    def run(*args: str, exit_code: int | None = 0, input: str | None = None) -> Result:
        result = CliRunner().invoke(root, list(args), catch_exceptions=False, input=input)
        if exit_code is not None:
            assert result.exit_code == exit_code, (
                f"selfevo {' '.join(args)} exited {result.exit_code}, expected {exit_code}:\n"
                f"{result.output}"
            )
        return result

    return run


@pytest.fixture
def tty():
    """A rich console that counts as a terminal, drawing into ``tty.file.getvalue()``.

    Progress bars are drawn only on a terminal, so tests that check a bar pass this as
    ``corpus.display.progress(..., console=tty)``; CliRunner's output is not a terminal.
    """
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=True, width=100)


def shared_data(*parts: str) -> Path:
    """A benchmark file found by the one lookup (corpus.presets.find_data_file:
    $SELFEVO_DATA, else shared/data above the checkout); skips the test when it is absent."""
    from corpus.presets import data_lookup_hint, find_data_file

    path = find_data_file(*parts)
    if path is None:
        pytest.skip(f"benchmark data {'/'.join(parts)} not found ({data_lookup_hint()})")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama model + BPE tokenizer with a ChatML-like chat template (offline)."""
    from trainer.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-chat"), with_chat_template=True)


@pytest.fixture(scope="session")
def tiny_model_dir_plain(tmp_path_factory) -> Path:
    """The same tiny model without a chat template (the trainer's plain fallback format)."""
    from trainer.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-plain"), with_chat_template=False)


@pytest.fixture
def server():
    """A scripted local OpenAI-compatible server (tests/openai_server.py) on an ephemeral port."""
    from openai_server import OpenAIServer

    with OpenAIServer() as s:
        yield s


@pytest.fixture
def close_openai_backends(monkeypatch):
    """Close every OpenAI backend a test made (their event-loop threads and HTTP sessions)."""
    from generation.backends.openai_backend import OpenAIBackend

    made: list[OpenAIBackend] = []
    original = OpenAIBackend.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(OpenAIBackend, "__init__", init)
    yield
    for b in made:
        b.close()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real Postgres server for the session (tests/postgres.py), stopped and deleted after."""
    from postgres import PostgresUnavailable, start_postgres

    # Not under pytest's basetemp: the server runs as another user, and every pytest that starts
    # on this machine (a second session, a helper) makes /tmp/pytest-of-USER private again
    # (mode 0700), after which the server can no longer read its own pg_hba.conf.
    root = Path(tempfile.mkdtemp(prefix="selfevo-postgres-"))
    try:
        server = start_postgres(root)
    except PostgresUnavailable as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start Postgres on this machine: {exc}")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def lake_db(postgres, tmp_path: Path) -> str:
    """A ``--db`` spec of a new DuckLake: a fresh Postgres database, Parquet under tmp_path."""
    import secrets

    conninfo = postgres.create_database(f"lake_{secrets.token_hex(6)}")
    return f"ducklake:postgres:{conninfo} data_path={tmp_path / 'lake'}"


# Property tests (Hypothesis): a quick pass in `make test`, a long one in `make test-all`
# (HYPOTHESIS_PROFILE=thorough). Tests that set max_examples themselves keep their own.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("fast", max_examples=40, deadline=None)
_hypothesis_settings.register_profile("thorough", max_examples=1000, deadline=None)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
