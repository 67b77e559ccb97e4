"""corpus/display.py: the one progress helper and summaries every command uses."""

from __future__ import annotations

import io
import warnings

from rich.console import Console

from corpus.display import progress, quiet_libraries, summary_line, summary_table


def test_progress_draws_on_a_terminal_and_stays_silent_otherwise():
    tty = Console(file=io.StringIO(), force_terminal=True, width=100)
    with progress("import", total=10, console=tty) as bar:
        for _ in range(10):
            bar.advance()
    drawn = tty.file.getvalue()
    assert "import" in drawn and "10/10" in drawn
    pipe = Console(file=io.StringIO(), force_terminal=False)
    with progress("import", total=10, console=pipe) as bar:
        bar.advance(10)
    assert pipe.file.getvalue() == ""


def test_progress_with_stages_adds_one_bar_per_task():
    tty = Console(file=io.StringIO(), force_terminal=True, width=100)
    with progress(console=tty) as display:
        a = display.task("answer", total=2)
        b = display.task("feedback", total=3)
        a.advance(2)
        b.update(completed=3, force=True)
    out = tty.file.getvalue()
    assert "answer" in out and "2/2" in out and "feedback" in out and "3/3" in out


def test_held_back_advances_are_drawn_at_the_end():
    tty = Console(file=io.StringIO(), force_terminal=True, width=100)
    with progress("rows", total=1000, console=tty) as bar:
        for _ in range(1000):  # far faster than MIN_INTERVAL: most redraws are held back
            bar.advance()
    assert "1000/1000" in tty.file.getvalue()


def test_summary_line_reads_as_words_and_leaves_nested_values_to_tables():
    line = summary_line("round 1 filter", {"selected": 1200, "kept": 3, "filter_run": "r:ab",
                                           "evals": [{"x": 1}], "loss": 0.123456, "skip": None})
    assert line == "round 1 filter: 1,200 selected, 3 kept, filter run r:ab, 0.1235 loss"
    assert "{" not in line and "evals" not in line
    assert summary_line("empty", {}) == "empty"


def test_summary_table_rows():
    out = io.StringIO()
    Console(file=out, width=80).print(summary_table("collect", {"records": 5, "cost": 0.5,
                                                              "none": None}))
    text = out.getvalue()
    assert "records" in text and "5" in text and "none" not in text


def test_quiet_libraries_silences_third_party_warnings_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        warnings.warn_explicit("old api", FutureWarning, "x.py", 1, module="transformers.x")
        warnings.warn_explicit("ours", FutureWarning, "y.py", 1, module="selfevo.evolve")
    messages = [str(w.message) for w in caught]
    assert "ours" in messages and "old api" not in messages


def test_a_task_that_reaches_its_total_is_drawn_done_at_once(tty):
    """Its clock stops when the work ends, not when the display closes (many tasks share one)."""
    with progress(console=tty) as display:
        bar = display.task("filter", total=3)
        bar.advance(2)
        bar.advance(1)  # within MIN_INTERVAL of the last draw, yet drawn: it fills the bar
        assert display.bars.tasks[0].finished
        spinner = display.task("snapshot")
        spinner.advance(4)
        assert not display.bars.tasks[1].finished
        spinner.finish()
        assert display.bars.tasks[1].finished and display.bars.tasks[1].total == 4
    assert "4/4" in tty.file.getvalue()


def test_restart_counts_a_new_phase_and_keeps_the_clock(tty):
    with progress("eval: answer", total=2, console=tty) as bar:
        bar.advance(2)
        task = bar._display.bars.tasks[0]
        started = task.start_time
        assert task.finished
        bar.restart("eval: self-feedback", 5)
        assert (task.completed, task.total, task.description) == (0, 5, "eval: self-feedback")
        assert not task.finished and task.start_time == started
        bar.advance(5)
        assert task.finished
    assert "eval: self-feedback" in tty.file.getvalue()


def test_long_labels_are_cut_and_leave_the_numbers_on_the_line(tty):
    label = "round 1 eval store:split = 'test' AND source = 'generated' AND length(text) > 20"
    with progress(label, total=3, console=tty) as bar:
        bar.advance(3)
    last = tty.file.getvalue().splitlines()[-2]  # the final draw (the last line shows the cursor)
    assert "3/3" in last and "…" in last and "length(text)" not in last


LEAN_CLI = """
import importlib, sys
from selfevo.cli import COMMANDS, cli

for args in (["--help"], ["sql", "SELECT 1", "--db", sys.argv[1]]):
    try:
        cli(args)
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)
for target, _ in COMMANDS.values():  # importing a command must not load them either
    importlib.import_module(target.split(":")[0])
heavy = [m for m in ("torch", "transformers", "peft", "datasets", "tqdm", "rich.progress")
         if m in sys.modules]
assert not heavy, heavy
"""


def test_help_sql_and_command_modules_import_no_heavy_library(tmp_path):
    """``selfevo --help`` and ``sql`` stay fast; and tqdm is not loaded before the root
    command has run quiet_libraries, whose TQDM_DISABLE tqdm reads once, when imported."""
    import subprocess
    import sys

    from corpus.store import Store

    db = str(tmp_path / "s.duckdb")
    Store.open(db).close()
    run = subprocess.run([sys.executable, "-c", LEAN_CLI, db], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
