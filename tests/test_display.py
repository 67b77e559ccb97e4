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
