"""The DuckDB corpus store: migrations, runs, prompts, records, decisions, snapshots, export."""

from corpus.errors import CorpusError, StoreBusy
from corpus.store import Run, Store, default_db_path
from corpus.version import code_version

__all__ = ["CorpusError", "Run", "Store", "StoreBusy", "code_version", "default_db_path"]
