"""How a stage's requests go out in batch mode: :class:`BatchOptions` and the shared flags.

``--mode online`` (the default) sends one request each; ``--mode batch`` writes the misses
as Batch JSONL shards and runs them through the provider's Batch API; ``--mode file``
writes the same shards and stops, for any engine that reads them (``vllm run-batch``,
SGLang, Ray Data LLM, a provider's console) and ``selfevo batches ingest``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import click

from generation.errors import GenerationError
from schemas.errors import Waiting

MODES = ("online", "batch", "file")
MB = 1_000_000


@dataclass
class BatchOptions:
    """Batch mode's settings (``runs.config`` keeps them, without the display)."""

    mode: str = "batch"  # batch: the provider's Batch API | file: write the shards and stop
    dir: str | None = None  # shards and downloaded results (None: <store>.batches/ next to it)
    max_requests: int = 50_000  # requests per shard (the OpenAI Batch API's limit)
    max_bytes: int = 200 * MB  # bytes per shard file (the OpenAI Batch API's limit)
    wait: bool = True  # poll until settled; False: submit, then stop (exit 3) for a later run
    poll_interval: float = 30.0  # seconds between two polls of the open batches
    max_attempts: int = 3  # submissions per request: expired / failed rows go into a new batch
    completion_window: str = "24h"  # the only window the OpenAI Batch API offers
    settle_chunk: int = 2000  # result lines per ledger transaction while settling
    #: a :class:`corpus.display.Display` to draw one task per batch on (not configuration)
    display: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("batch", "file"):
            raise GenerationError(f"batch mode {self.mode!r}: use batch or file")
        if self.max_requests < 1 or self.max_bytes < 1024:
            raise GenerationError("--shard-requests must be >= 1 and --shard-mb large enough "
                                  "for one request")
        if self.max_attempts < 1:
            raise GenerationError("--max-attempts must be at least 1")

    def as_config(self) -> dict[str, Any]:
        """The settings as stored in ``runs.config``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "display"}

    def directory(self, db_path: Path) -> Path:
        """Where shards and results go: ``dir``, else ``<store file>.batches/``."""
        return Path(self.dir) if self.dir else db_path.with_name(db_path.name + ".batches")


class BatchesOpen(GenerationError, Waiting):
    """The stage's batches are not settled yet: the command stops; a later run continues."""


def check_batchable(backend: Any, store: Any) -> None:
    """Refuse batch mode where it cannot work: an in-process model, or no store to keep it."""
    if not getattr(backend, "batchable", False):
        raise GenerationError(
            f"--mode batch/file sends requests as Batch API / JSONL files: it needs an openai: "
            f"model, not {backend.spec} (in-process models answer with --mode online)")
    if store is None:
        raise GenerationError("--mode batch/file keeps its batches in the store: give --db")


def load_backend_for(spec: str, batch: BatchOptions | None) -> Any:
    """:func:`generation.backends.load_backend`, needing no API key when --mode file sends nothing."""
    from generation.backends import load_backend

    if batch is not None and batch.mode == "file" and spec.startswith("openai:"):
        return load_backend(spec, require_key=False)
    return load_backend(spec)


@contextlib.contextmanager
def batch_display(batch: BatchOptions | None) -> Iterator[None]:
    """While the block runs, a progress display (stderr) for ``batch``'s polling, if any."""
    if batch is None:
        yield
        return
    from corpus.display import progress

    with progress() as display:
        batch.display = display
        try:
            yield
        finally:
            batch.display = None


def mode_options(*, flag: str = "--mode", out: bool = True, attempts: bool = True
                 ) -> Callable[[Any], Any]:
    """``--mode`` and the batch flags, collapsed into one ``batch`` argument.

    The command receives ``batch``: None for ``--mode online``, else a :class:`BatchOptions`.
    ``flag``: the option's name where ``--mode`` means something else (``eval run``);
    ``out``: ``--out DIR`` also names ``--batch-dir`` (commands without their own --out);
    ``attempts``: add ``--max-attempts`` (commands that have none).
    """

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def command(*args: Any, generation_mode: str, batch_dir: str | None, wait: bool,
                    poll_interval: float, shard_requests: int, shard_mb: float,
                    **kwargs: Any) -> Any:
            max_attempts = kwargs.pop("batch_max_attempts", 3)
            kwargs["batch"] = None if generation_mode == "online" else BatchOptions(
                mode=generation_mode, dir=batch_dir, wait=wait, poll_interval=poll_interval,
                max_requests=shard_requests, max_bytes=int(shard_mb * MB),
                max_attempts=max_attempts)
            return f(*args, **kwargs)

        dir_names = ("--batch-dir", "--out") if out else ("--batch-dir",)
        options = [
            click.option(flag, "generation_mode", type=click.Choice(MODES), default="online",
                         show_default=True,
                         help="online: one request each; batch: the provider's Batch API "
                              "(half price, within 24 h); file: write Batch JSONL shards "
                              "for any engine and stop (docs/collect.md, 'Batch')."),
            click.option(*dir_names, "batch_dir", type=click.Path(file_okay=False),
                         help="Batch modes: folder of the shards and results "
                              "(default: STORE.batches/ next to the store)."),
            click.option("--wait/--no-wait", default=True, show_default=True,
                         help=f"{flag} batch: poll until the batches are settled, or submit "
                              "and stop (exit 3; run the same command again later)."),
            click.option("--poll-interval", default=30.0, show_default=True, metavar="S",
                         help=f"{flag} batch: seconds between polls."),
            click.option("--shard-requests", default=50_000, show_default=True, metavar="N",
                         help="Batch modes: requests per shard, at most."),
            click.option("--shard-mb", default=200.0, show_default=True, metavar="MB",
                         help="Batch modes: size of a shard file, at most."),
        ]
        if attempts:
            options.append(click.option(
                "--max-attempts", "batch_max_attempts", default=3, show_default=True,
                help=f"{flag} batch: submissions per request (rows of an expired or failed "
                     "batch go into a new one until this many)."))
        for option in reversed(options):
            command = option(command)
        return command

    return decorate
