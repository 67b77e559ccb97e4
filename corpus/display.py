"""How selfevo shows long work: one progress helper, readable summaries, quiet libraries.

Every command that can run for more than a few seconds shows its progress the same way:

* :func:`progress` — a bar (or, with no total, a spinner with a count) on stderr while the
  work runs, drawn only when stderr is a terminal, so logs, pipes and tests stay clean;
  several tasks may share one display (``display.task(...)``), e.g. one bar per stage;
* :func:`summary_line` — the one line every step ends with (``label: 12 records, kept 3``);
* :func:`summary_table` — a small two-column table for results with more than a few numbers;
* :func:`quiet_libraries` — third-party noise (deprecation warnings, per-file load bars,
  transformers' info logs) kept off the user's terminal; ``--debug`` leaves it on.

stdout is for results (tables, ``--json``), stderr for progress and logs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

#: Least seconds between two redraws caused by one task's updates (callers may update per item).
MIN_INTERVAL = 0.1
#: Widest a task's label is drawn (longer ones end in "…").
MAX_LABEL = 40


class Tracker:
    """One task of a :class:`Display`: advance it, or set its numbers."""

    def __init__(self, display: Display, task_id: Any, total: int | None = None):
        self._display = display
        self._id = task_id
        self._last = 0.0
        self._pending = 0
        # What the task will show once drawn: a step that reaches its total is drawn at
        # once, so its bar is full and its clock stops when the work ends, not at the end
        # of the display.
        self._completed = 0
        self._total = total

    def _reaches_total(self) -> bool:
        return self._total is not None and self._completed >= self._total

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done (redraws at most every :data:`MIN_INTERVAL` s)."""
        with self._display.lock:
            self._pending += n
            self._completed += n
            now = time.monotonic()
            if now - self._last < MIN_INTERVAL and not self._reaches_total():
                return
            self._last = now
            n, self._pending = self._pending, 0
        self._display.bars.advance(self._id, n)

    def update(self, *, completed: int | None = None, total: int | None = None,
               description: str | None = None, info: str | None = None,
               force: bool = False) -> None:
        """Set the task's numbers; unchanged fields stay as they are."""
        with self._display.lock:
            if total is not None:
                self._total = total
            if completed is not None:
                self._completed, self._pending = completed, 0
            now = time.monotonic()
            if (not force and completed is not None and now - self._last < MIN_INTERVAL
                    and not self._reaches_total()):
                return
            self._last = now
        fields: dict[str, Any] = {}
        if completed is not None:
            fields["completed"] = completed
        if total is not None:
            fields["total"] = total
        if description is not None:
            fields["description"] = description
        if info is not None:
            fields["info"] = info
        self._display.bars.update(self._id, **fields)

    def restart(self, description: str, total: int | None = None) -> None:
        """Begin the task's next phase (read → write; answer → self-feedback → …): the count
        starts again at 0 of ``total`` under a new label; the clock keeps running."""
        with self._display.lock:
            self._completed, self._pending = 0, 0
            self._total = total if total is not None else self._total
        bars = self._display.bars
        bars.update(self._id, total=total, completed=0, description=description)
        # A phase that filled the bar stopped the task's clock; the next one starts it again
        # (Progress.reset would also zero it: the task's time is all its phases').
        next(t for t in bars.tasks if t.id == self._id).finished_time = None

    def flush(self) -> None:
        """Draw what :meth:`advance` held back."""
        with self._display.lock:
            n, self._pending = self._pending, 0
        if n:
            self._display.bars.advance(self._id, n)

    def finish(self, info: str | None = None) -> None:
        """Show the task as done: a full bar (a spinner becomes a full bar of its count).

        Without it a task with no total keeps spinning, and its clock running, to the end.
        """
        self.flush()
        done = self._total if self._total is not None else max(1, self._completed)
        self.update(total=done, completed=done, info=info, force=True)


class Display:
    """A live progress display on stderr holding one or more tasks."""

    def __init__(self, console: Any):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.table import Column

        self.lock = threading.Lock()
        self.trackers: list[Tracker] = []
        # Long labels (a benchmark given as SQL, a file path) are cut, not allowed to squeeze
        # the bar and the numbers off the line.
        label = Column(max_width=MAX_LABEL, no_wrap=True, overflow="ellipsis")
        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}", table_column=label),
                             BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                             TimeElapsedColumn(), console=console,
                             disable=not console.is_terminal, transient=False)

    def task(self, description: str, total: int | None = None, info: str = "") -> Tracker:
        """Add a task (a bar when ``total`` is known, else a spinner with a count)."""
        tracker = Tracker(self, self.bars.add_task(description, total=total, info=info), total)
        self.trackers.append(tracker)
        return tracker


def stderr_console() -> Any:
    """The console progress and logs go to."""
    from rich.console import Console

    return Console(stderr=True)


@contextlib.contextmanager
def progress(description: str | None = None, total: int | None = None, *, info: str = "",
             console: Any = None) -> Iterator[Any]:
    """A progress display for the ``with`` block.

    With ``description`` it yields that task's :class:`Tracker`; without, the
    :class:`Display` itself, whose ``task(...)`` adds bars as stages begin.
    """
    display = Display(console or stderr_console())
    first = display.task(description, total, info) if description is not None else None
    with display.bars:
        try:
            yield first if first is not None else display
        finally:
            for tracker in display.trackers:
                tracker.flush()


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    return str(value)


def summary_line(label: str, counts: Mapping[str, Any] | None = None, **more: Any) -> str:
    """``label: 1,200 records, 3 kept, snapshot evolve-x-r1`` from a counts mapping.

    Nested mappings and lists (stage outputs such as per-benchmark evals) are left out: they
    belong in a table. Keys with ``None`` values are skipped.
    """
    items = {**(counts or {}), **more}
    parts = []
    for key, value in items.items():
        if value is None or isinstance(value, (dict, list, tuple)):
            continue
        name = key.replace("_", " ")
        parts.append(f"{_number(value)} {name}" if isinstance(value, (int, float))
                     and not isinstance(value, bool) else f"{name} {_number(value)}")
    return f"{label}: {', '.join(parts)}" if parts else label


def summary_table(title: str, rows: Mapping[str, Any]) -> Any:
    """A two-column rich table (``what``, ``value``) for a result with several numbers."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        if value is not None:
            table.add_row(key, _number(value))
    return table


_QUIET_CATEGORIES = (DeprecationWarning, FutureWarning, UserWarning)
_QUIET_LOGGERS = ("transformers", "peft", "datasets", "huggingface_hub", "accelerate",
                  "torch.distributed", "urllib3", "filelock")


def quiet_libraries(enabled: bool = True) -> None:
    """Keep third-party warnings, info logs and download/conversion bars off the terminal.

    Called once by the CLI root (not under ``--debug``). Only other packages' messages are
    silenced: warnings raised from selfevo's own modules still show.
    """
    if not enabled:
        return
    import os

    for category in _QUIET_CATEGORIES:
        for module in (r"transformers\..*", r"torch\..*", r"peft\..*", r"datasets\..*",
                       r"huggingface_hub\..*", r"accelerate\..*", r"gguf\..*", r"pyarrow\..*"):
            warnings.filterwarnings("ignore", category=category, module=module)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Read by transformers, datasets and huggingface_hub when they are imported later.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
