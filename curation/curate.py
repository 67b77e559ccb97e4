"""Running filter steps over a selection: decisions for every record, timed, as one run.

Semantics (documented in docs/curate.md): **every step checks every selected record**, and
each writes one ``decisions`` row per record, kept or not. Nothing is hidden from a later step,
so a record's full profile is in the store ("failed length *and* refusal"), and re-ordering
steps never changes a decision. The funnel (``corpus.funnel``) is the cumulative view: a
record is *dropped by* the first step in ``--step`` order that it failed, and it is *kept* by
the run when it passed every step (the ``record_passed`` view: ``passed_all``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corpus.decisions import insert_decisions
from corpus.store import Store
from curation.filters.base import Result, Step, StepError
from curation.selection import Selection, count_selected, iter_selected

if TYPE_CHECKING:
    from corpus.display import Tracker


@dataclass
class FilterRun:
    """What a ``curate filter`` run did."""

    run_id: str
    selected: int
    kept: int
    seconds: dict[str, float] = field(default_factory=dict)


def check_labels(steps: Sequence[Step]) -> None:
    """Step labels must be unique within a run (they key the decisions)."""
    seen: set[str] = set()
    for step in steps:
        if step.label in seen:
            raise StepError(f"step {step.label!r} appears twice; label one of them, e.g. "
                            f"--step '{step.filter.name}:as={step.label}-2,…'")
        seen.add(step.label)


def steps_config(steps: Sequence[Step]) -> list[dict[str, object]]:
    """The ``steps`` list recorded in ``runs.config`` (its order is the funnel order)."""
    return [{"step": s.label, "filter": s.filter.name, "params": s.filter.params()}
            for s in steps]


def run_filters(
    store: Store,
    steps: Sequence[Step],
    selection: Selection,
    *,
    chunk_size: int = 50_000,
    progress: Tracker | None = None,
    parent_run_id: str | None = None,
) -> FilterRun:
    """Run ``steps`` over the selected records as one ``curate filter`` run.

    Each chunk's decisions of all steps land in one short transaction. ``progress`` (a
    ``corpus.display`` tracker) counts the records done and names the step running;
    ``parent_run_id`` links the run to the one it belongs to (e.g. an ``evolve`` round).
    """
    if not steps:
        raise StepError("give at least one --step (see 'selfevo curate steps')")
    check_labels(steps)
    selected = count_selected(store, selection)
    columns = [c for s in steps for c in s.filter.needed_columns()]
    config = {"steps": steps_config(steps), "selection": selection.as_dict(),
              "chunk_size": chunk_size}
    seconds = {s.label: 0.0 for s in steps}
    kept = 0
    if progress is not None:
        progress.update(total=selected, force=True)
    with store.run("curate filter", config, parent_run_id) as run:
        for chunk in iter_selected(store, selection, columns, chunk_size):
            per_step: list[list[Result]] = []
            for step in steps:
                if progress is not None:
                    progress.update(info=step.label)
                t0 = time.perf_counter()
                results = step.filter.check_batch(chunk)
                seconds[step.label] += time.perf_counter() - t0
                if len(results) != len(chunk):
                    raise RuntimeError(f"step {step.label} returned {len(results)} results "
                                       f"for {len(chunk)} records")
                per_step.append(results)
            # Lists, not generators: the body may run again after a lost commit on a lake.
            batches = [(step.label, step.filter.params(),
                        [{"record_id": rec["record_id"], "passed": bool(r.passed),
                          "score": r.score, "reason": r.reason, "detail": r.detail}
                         for rec, r in zip(chunk, results, strict=True)])
                       for step, results in zip(steps, per_step, strict=True)]

            def write(con: Any, batches: list[Any] = batches) -> None:
                for label, params, rows in batches:
                    insert_decisions(con, rows, run_id=run.run_id, step=label, params=params)

            store.transact(write)
            kept += sum(all(res[i].passed for res in per_step) for i in range(len(chunk)))
            run.add("records", len(chunk))
            if progress is not None:
                progress.advance(len(chunk))
        run.counts["selected"] = selected
        run.counts["kept"] = kept
        run.counts["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
    return FilterRun(run.run_id, selected, kept, seconds)
