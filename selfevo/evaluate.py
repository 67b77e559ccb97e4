"""Benchmark evaluation: direct and self-refined accuracy with 95% Wilson intervals.

One ``eval run`` is a ``runs`` row; each mode it scores is one ``evals`` row (linked to the
registered model when the spec names a checkpoint in ``models``) with one ``eval_items`` row
per benchmark item: the question, gold answer, extracted prediction, the full output and, in
``detail``, the feedback/refinement steps, the call ids and the self-consistency samples.

Answers are extracted and compared by :mod:`curation.answers`, the same code the reference
grader and the gold-match filter use. Direct and refine share the initial answer (the same
call), so their difference is exactly what self-refinement changed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corpus.sqlfragment import SqlCondition
from generation.failures import Failures
from schemas.identity import canonical_json, content_id
from selfevo import SelfevoError
from selfevo.refine import RefinePrompts, RefineResult, self_refine
from selfevo.stats import wilson_interval  # re-exported: one implementation, in stats

if TYPE_CHECKING:
    from corpus.store import Store
    from generation.backends.base import Backend
    from generation.batches import BatchOptions
    from generation.ledger import Progress

MODES = ("direct", "refine")
PRESETS = ("gsm8k", "svamp")


@dataclass(frozen=True)
class BenchItem:
    """One benchmark question with its gold final answer."""

    item_id: str
    question: str
    gold: str


@dataclass
class EvalSummary:
    """The result of one mode of one evaluation (an ``evals`` row)."""

    eval_id: str
    model: str
    benchmark: str
    mode: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    model_id: str | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0  # items not scored: their requests failed (not counted in n)
    failure: str | None = None  # "3 of 50 items failed (connection 3): …"


# -- benchmarks -----------------------------------------------------------------------------
def load_items(
    bench: str,
    *,
    path: str | None = None,
    limit: int | None = None,
    store: Store | None = None,
    where: str | SqlCondition | None = None,
) -> tuple[str, list[BenchItem]]:
    """(benchmark name, items) for ``gsm8k``, ``svamp``, ``store`` or a file path.

    ``gsm8k``/``svamp`` read ``path`` (default: the test file found by
    :func:`corpus.presets.benchmark_file`: ``$SELFEVO_DATA``, else ``shared/data`` above the
    checkout) through the prompt presets; ``store`` takes labelled prompts from the store
    matching ``where``; anything else is a JSONL/JSON file read with the gsm8k preset's field names
    (``question``/``answer``).
    """
    if bench == "store":
        if store is None:
            raise SelfevoError("--bench store needs a store (--db)")
        text = where.text if isinstance(where, SqlCondition) else where
        return f"store:{text or 'all'}", _store_items(store, where, limit)
    if bench in PRESETS:
        from corpus.presets import benchmark_file, data_lookup_hint

        found, name = benchmark_file(bench, path), bench
        if found is None:
            raise SelfevoError(f"no {bench} test file found ({data_lookup_hint()}); pass "
                               "--path FILE")
        file = str(found)
    else:
        file, name = path or bench, Path(path or bench).name
    if not Path(file).exists():
        raise SelfevoError(
            f"benchmark file {file} not found; pass --path FILE (e.g. gsm8k test.jsonl)"
        )
    items = _file_items(file, bench if bench in PRESETS else None)
    seen: set[str] = set()
    for it in items:  # eval_items is keyed by item id: say so now, not after the model ran
        if it.item_id in seen:
            raise SelfevoError(f"{file}: item id {it.item_id!r} appears twice; ids must be unique")
        seen.add(it.item_id)
    return name, items[:limit] if limit else items


def _file_items(file: str, preset: str | None) -> list[BenchItem]:
    """Items of a benchmark file: a preset's reader, or question/text + answer/gold_answer."""
    from corpus.errors import CorpusError
    from corpus.importers import read_prompt_rows
    from corpus.presets import load_benchmark_items

    try:
        if preset:
            rows = load_benchmark_items(file, preset)
        else:
            rows = []
            mapping = {"question": "text", "answer": "gold_answer"}
            for i, f in enumerate(read_prompt_rows(file, mapping=mapping)):
                meta = f.get("meta") if isinstance(f.get("meta"), dict) else {}
                f["item_id"] = str(meta.get("id") or meta.get("item_id") or
                                   f"{Path(file).stem}-{i}")
                rows.append(f)
    except CorpusError as exc:
        raise SelfevoError(str(exc)) from None
    out = []
    for i, row in enumerate(rows):
        if row.get("gold_answer") is None:
            raise SelfevoError(f"{file}: item {i + 1} has no gold answer (field 'answer')")
        out.append(BenchItem(str(row["item_id"]), row["text"], str(row["gold_answer"])))
    return out


def _store_items(store: Store, where: str | SqlCondition | None, limit: int | None
                 ) -> list[BenchItem]:
    """Labelled prompts matching ``where`` (a checked condition, evaluated read-only)."""
    import duckdb

    from corpus.sqlfragment import first_line, read_only

    cond = SqlCondition.of(where, "--where")
    shown = f"{cond.flag} {cond.text!r}" if cond else "--where"
    sql = (
        "SELECT prompt_id, text, gold_answer FROM prompts WHERE gold_answer IS NOT NULL"
        + (f" AND {cond.sql}" if cond else "") + " ORDER BY prompt_id"
        + (f" LIMIT {int(limit)}" if limit else "")
    )
    try:
        with store.connection() as con, read_only(con) as cur:
            rows = cur.execute(sql).fetchall()
    except duckdb.Error as exc:  # a user's WHERE clause: say which one failed
        raise SelfevoError(f"{shown} failed: {first_line(exc)}") from None
    if not rows:
        raise SelfevoError(f"no labelled prompts match {shown}")
    return [BenchItem(pid, text, gold) for pid, text, gold in rows]


# -- model linkage --------------------------------------------------------------------------
def registered_model_id(store: Store, backend: Backend) -> str | None:
    """``models.model_id`` of the checkpoint ``backend`` loads, if it is registered.

    A local model is found by its weights fingerprint, wherever its folder lies now; rows
    registered before fingerprints were kept (``weights`` NULL) by their folder. The adapter
    is the checkpoint when there is one.
    """
    from generation.backends.hf import HFBackend, parse_spec, weights_fingerprint

    if isinstance(backend, HFBackend):
        folders = [backend.adapter_path, backend.base_path]
    elif backend.spec.startswith("hf:"):  # another backend naming hf folders (test doubles)
        model, adapter = parse_spec(backend.spec)
        folders = [adapter, model]
    else:
        return None
    rows = store.query("SELECT model_id, path, weights FROM models ORDER BY created_at DESC")
    for folder in filter(None, folders):
        weights = weights_fingerprint(folder)
        for model_id, path, stored in rows:
            if (stored == weights) if stored else _same_path(path, folder):
                return model_id
    return None


def _same_path(a: str, b: str) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return a == b


# -- scoring ------------------------------------------------------------------------------
def majority_vote(predictions: Sequence[str | None]) -> str | None:
    """The most frequent answer (equivalence by ``answers_match``); ties go to the first seen."""
    from curation.answers import answers_match

    groups: list[list[str]] = []
    for p in predictions:
        if p is None:
            continue
        for g in groups:
            if answers_match(p, g[0]):
                g.append(p)
                break
        else:
            groups.append([p])
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equal lengths


def _score(gold: str, outputs: list[str | None]) -> tuple[str | None, bool, list[str | None]]:
    from curation.answers import answers_match, extract_answer

    preds = [extract_answer(o) if o else None for o in outputs]
    pred = preds[0] if len(preds) == 1 else majority_vote(preds)
    return pred, bool(pred is not None and answers_match(pred, gold)), preds


def _failed(r: RefineResult, mode: str) -> bool:
    """Whether ``r``'s requests failed in ``mode`` (direct: its answer; refine: any stage)."""
    return r.request_failed and (mode == "refine" or r.answer is None)


def split_failed(items: Sequence[BenchItem], results: Sequence[RefineResult], samples: int,
                 mode: str) -> tuple[list[BenchItem], list[RefineResult], Failures]:
    """The items every request of which got an answer in ``mode`` (with their results), and
    the failures of the others: a failed request is never scored as a wrong answer."""
    failures = Failures()
    kept_items: list[BenchItem] = []
    kept_results: list[RefineResult] = []
    for k, item in enumerate(items):
        group = list(results[k * samples:(k + 1) * samples])
        bad = next((r for r in group if _failed(r, mode)), None)
        failures.add(bad is None, bad and bad.error_kind, bad and bad.error)
        if bad is None:
            kept_items.append(item)
            kept_results += group
    return kept_items, kept_results, failures


def score_results(
    items: Sequence[BenchItem], results: Sequence[RefineResult], samples: int, mode: str
) -> list[dict[str, Any]]:
    """``eval_items`` rows of one mode from ``samples`` refine results per item (item-major)."""
    rows = []
    for k, item in enumerate(items):
        group = list(results[k * samples:(k + 1) * samples])
        outputs = [r.answer if mode == "direct" else r.final for r in group]
        pred, ok, preds = _score(item.gold, outputs)
        detail: dict[str, Any] = {"answer_call_ids": [r.answer_call_id for r in group]}
        if mode == "refine":
            detail["steps"] = [[_step(s) for s in r.steps] for r in group]
            detail["stopped"] = [r.stopped for r in group]
        if samples > 1:
            detail["samples"] = preds
        errors = [r.error for r in group if r.error]
        if errors:
            detail["errors"] = errors
        rows.append({
            "item_id": item.item_id, "question": item.question, "gold": item.gold,
            "prediction": pred, "response": outputs[0], "correct": ok, "detail": detail,
        })
    return rows


def _step(s: Any) -> dict[str, Any]:
    return {"feedback": s.feedback, "verdict": s.verdict, "refinement": s.refinement,
            "feedback_call_id": s.feedback_call_id,
            "refinement_call_id": s.refinement_call_id}


# -- the evaluation -----------------------------------------------------------------------
def evaluate(
    store: Store,
    backend: Backend,
    items: Sequence[BenchItem],
    *,
    benchmark: str,
    modes: Sequence[str] = ("direct",),
    steps: int = 1,
    stop_on_correct: bool = False,
    self_consistency: int = 1,
    params: dict[str, Any] | None = None,
    model_id: str | None = None,
    prompts: RefinePrompts | None = None,
    round: int | None = None,
    parent_run_id: str | None = None,
    progress: Progress | None = None,
    batch: BatchOptions | None = None,
) -> list[EvalSummary]:
    """Evaluate ``backend`` on ``items`` in each mode; writes ``evals`` and ``eval_items``.

    Self-consistency (``self_consistency`` = K > 1) samples K answers per item (temperature
    0.7 unless ``params`` sets one) and scores the majority answer; in refine mode each sample
    is refined and the refined answers vote. ``prompts`` picks the templates of each stage.
    ``round`` (a self-evolution round) and ``parent_run_id`` (e.g. the evolve run) are kept
    in the run/evals config so comparisons and the report can order rounds. ``progress``
    hears every finished request (see :func:`selfevo.refine_cli.stage_progress`). ``batch``
    sends each stage as batches (``--mode batch|file``).
    """
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise SelfevoError(f"unknown mode {bad}; use direct, refine or both")
    if not items:
        raise SelfevoError("the benchmark has no items")
    k = max(1, self_consistency)
    p = dict(params or {})
    if k > 1:
        p.setdefault("temperature", 0.7)
    model_id = model_id or registered_model_id(store, backend)
    prompts = prompts or RefinePrompts()
    config = {
        "model": backend.spec, "benchmark": benchmark, "modes": list(modes), "steps": steps,
        "stop_on_correct": stop_on_correct, "self_consistency": k, "params": p,
        "n_items": len(items), "model_id": model_id, "template_set": prompts.template_set,
        "plain_answer": prompts.plain_answer, "templates": prompts.hashes(), "round": round,
    }
    with store.run("eval run", config, parent_run_id=parent_run_id) as run:
        questions = [it.question for it in items for _ in range(k)]
        indices = [j for _ in items for j in range(k)]
        results = self_refine(
            backend, questions, steps=steps if "refine" in modes else 0,
            stop_on_correct=stop_on_correct, params=p, sample_indices=indices,
            prompts=prompts, store=store, run_id=run.run_id, progress=progress, batch=batch,
        )
        summaries = []
        for mode in modes:
            scored, answered, failures = split_failed(items, results, k, mode)
            failures.check_any_succeeded(
                f"items ({mode})", len(scored), f"Is {backend.spec} reachable? Rerun the same "
                "command to retry (answered calls are cached).")
            if failures.failed:
                run.add(f"failed_items_{mode}", failures.failed)
            rows = score_results(scored, answered, k, mode)
            correct = sum(r["correct"] for r in rows)
            lo, hi = wilson_interval(correct, len(rows))
            eval_id = content_id({"run_id": run.run_id, "mode": mode, "benchmark": benchmark,
                                  "model": backend.spec})
            summaries.append(EvalSummary(
                eval_id=eval_id, model=backend.spec, benchmark=benchmark, mode=mode,
                n=len(rows), correct=correct, accuracy=correct / len(rows), ci_low=lo,
                ci_high=hi, model_id=model_id, items=rows, failed=failures.failed,
                failure=failures.describe("items") if failures.failed else None,
            ))
        _write(store, summaries, config, run.run_id)
        run.add("evals", len(summaries))
        run.add("eval_items", sum(s.n for s in summaries))
    return summaries


def _write(store: Store, summaries: list[EvalSummary], config: dict[str, Any], run_id: str
           ) -> None:
    store.transact(lambda con: _insert_evals(con, summaries, config, run_id))


def _insert_evals(con: Any, summaries: list[EvalSummary], config: dict[str, Any],
                  run_id: str) -> None:
    for s in summaries:
        con.execute(
            "INSERT INTO evals (eval_id, model, model_id, benchmark, mode, n, correct,"
            " accuracy, ci_low, ci_high, config, run_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [s.eval_id, s.model, s.model_id, s.benchmark, s.mode, s.n, s.correct,
             s.accuracy, s.ci_low, s.ci_high, canonical_json(config), run_id],
        )
        con.executemany(
            "INSERT INTO eval_items (eval_id, item_id, question, gold, prediction, response,"
            " correct, detail) VALUES (?,?,?,?,?,?,?,?)",
            [[s.eval_id, r["item_id"], r["question"], r["gold"], r["prediction"],
              r["response"], r["correct"], canonical_json(r["detail"])] for r in s.items],
        )


# -- comparison ---------------------------------------------------------------------------
def compare_evals(store: Store, benchmark: str | None = None) -> list[dict[str, Any]]:
    """One row per (model, benchmark, eval run): direct and refine accuracy with intervals.

    Rows carry the model's registered id and training snapshot hash when it is a checkpoint,
    oldest first, so rounds of an evolve run read top to bottom.
    """
    sql = """
        SELECT e.run_id, e.model, e.model_id, m.snapshot_hash, e.benchmark, e.mode, e.n,
               e.correct, e.accuracy, e.ci_low, e.ci_high, e.created_at,
               TRY_CAST(json_extract_string(e.config, '$.round') AS INTEGER) AS round
        FROM evals e LEFT JOIN models m USING (model_id)
        {where} ORDER BY e.created_at, e.run_id, e.mode
    """.format(where="WHERE e.benchmark = ?" if benchmark else "")
    rows = store.query_dicts(sql, [benchmark] if benchmark else [])
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["run_id"], r["model"], r["benchmark"])
        row = out.setdefault(key, {
            "run_id": r["run_id"], "model": r["model"], "model_id": r["model_id"],
            "snapshot_hash": r["snapshot_hash"], "benchmark": r["benchmark"], "n": r["n"],
            "round": r["round"],
            "created_at": r["created_at"], "direct": None, "refine": None,
        })
        row[r["mode"]] = {"accuracy": r["accuracy"], "ci_low": r["ci_low"],
                          "ci_high": r["ci_high"], "correct": r["correct"], "n": r["n"]}
    return list(out.values())


def format_accuracy(cell: dict[str, Any] | None) -> str:
    """``41.2% [35.0, 47.6]`` (accuracy and 95% interval in percent), or ``-``."""
    if not cell:
        return "-"
    return (f"{100 * cell['accuracy']:.1f}% [{100 * (cell['ci_low'] or 0):.1f}, "
            f"{100 * (cell['ci_high'] or 0):.1f}]")


def print_summaries(summaries: Sequence[EvalSummary]) -> None:
    """A rich table of one evaluation's modes (fits 80 columns)."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if summaries:
        console.print(f"[bold]{summaries[0].model}[/] on {summaries[0].benchmark}",
                      markup=True, highlight=False)
    table = Table(box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("mode")
    table.add_column("correct / n", justify="right", no_wrap=True)
    table.add_column("accuracy [95% CI]", justify="right", no_wrap=True)
    table.add_column("eval_id", overflow="fold")
    for s in summaries:
        table.add_row(s.mode, f"{s.correct} / {s.n}", format_accuracy(vars(s)), s.eval_id)
    console.print(table)
    for s in summaries:  # partial failure: said with counts, never scored as wrong answers
        if s.failure:
            console.print(f"[yellow]{s.mode}: not scored: {escape(s.failure)}[/]")


def print_comparison(rows: Sequence[dict[str, Any]]) -> None:
    """A rich table of :func:`compare_evals` rows (or a hint when there are none).

    The model cell carries the registered id and training snapshot on a second line so the
    table stays readable at 80 columns.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if not rows:
        console.print("no evaluations yet; run 'selfevo eval run --model SPEC --bench gsm8k'")
        return
    table = Table(title="accuracy with 95% Wilson interval, oldest first", box=box.SIMPLE_HEAD,
                  title_justify="left")
    table.add_column("round", justify="right", no_wrap=True)
    table.add_column("model / checkpoint", overflow="fold", ratio=1)
    table.add_column("bench", overflow="fold", max_width=14)
    table.add_column("n", justify="right", no_wrap=True)
    for col in ("direct", "refine"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("Δ", justify="right", no_wrap=True)
    for r in rows:
        d, f = r["direct"], r["refine"]
        delta = f"{100 * (f['accuracy'] - d['accuracy']):+.1f}" if d and f else "-"
        model = Text(r["model"])
        if r["model_id"]:
            model.append(f"\n{_short_id(r['model_id'])} snap {_short_id(r['snapshot_hash'])}",
                         style="dim")
        table.add_row("-" if r["round"] is None else str(r["round"]), model, r["benchmark"],
                      str(r["n"]), _two_lines(d), _two_lines(f), delta)
    console.print(table)


def _two_lines(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "-"
    return (f"{100 * cell['accuracy']:.1f}%\n[{100 * (cell['ci_low'] or 0):.1f}, "
            f"{100 * (cell['ci_high'] or 0):.1f}]")


def _short_id(value: str | None) -> str:
    return "-" if not value else value[:11]
