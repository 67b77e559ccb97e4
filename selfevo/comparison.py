"""Paired comparison of evaluations on the same items (``selfevo eval compare --a … --b …``).

Two evaluations of the same benchmark answer the same items, so their difference is measured
item by item, not by overlapping intervals: :func:`compare_pair` matches ``eval_items`` by
item id (refusing when a shared id carries a different question), and reports

* both accuracies with 95% Wilson intervals, on the items both answered;
* the 2×2 table: right in both, only in A, only in B, in neither;
* the exact McNemar p-value on the discordant items (:func:`selfevo.stats.mcnemar_exact`);
* for direct vs refine of one evaluation run (refine starts from the direct answers), the
  transitions wrong→right and right→wrong: what refining changed;
* for a refine-mode evaluation, the critic's sensitivity and specificity: its first
  self-feedback verdict on each sample's initial answer against whether that answer is right
  (the answer text comes from the call ledger; :mod:`selfevo.stats` defines both rates).

:func:`compare_evaluations` compares one A with several Bs, :func:`compare_neighbours` each
evaluation with the next (arms A0 → A1 → A2); both add Holm-adjusted p-values.
:func:`evaluation_pairs` lists the comparisons a store's evaluations invite (the report).
Everything returned is plain data (dicts, numbers, strings) so the report can render it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from selfevo import SelfevoError
from selfevo.stats import critic_quality, holm, paired_counts, wilson_interval

if TYPE_CHECKING:
    from corpus.store import Store

_EVAL_COLUMNS = "eval_id, model, benchmark, mode, run_id, n, created_at"


@dataclass(frozen=True)
class EvalRef:
    """One stored evaluation (an ``evals`` row)."""

    eval_id: str
    model: str
    benchmark: str
    mode: str
    run_id: str
    n: int

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


def _evals(store: Store, where: str, params: list[Any]) -> list[EvalRef]:
    rows = store.query(f"SELECT {_EVAL_COLUMNS} FROM evals WHERE {where} "
                       "ORDER BY created_at DESC, eval_id", params)
    return [EvalRef(*r[:6]) for r in rows]


def resolve_eval(store: Store, ref: str, *, bench: str | None = None,
                 mode: str = "direct") -> EvalRef:
    """The evaluation ``ref`` names: an ``eval_id`` (or a unique prefix of one), or a model
    spec — then its latest evaluation in ``mode`` (on ``bench`` when given)."""
    by_id = _evals(store, "eval_id LIKE ? || '%'", [ref]) if len(ref) >= 4 else []
    if len(by_id) == 1:
        return by_id[0]
    if len(by_id) > 1:
        raise SelfevoError(f"'{ref}' is the start of {len(by_id)} eval ids; give more of it")
    where, params = "model = ? AND mode = ?", [ref, mode]
    if bench:
        where, params = where + " AND benchmark = ?", [*params, bench]
    found = _evals(store, where, params)
    if not found:
        on = f" on {bench}" if bench else ""
        raise SelfevoError(
            f"no {mode} evaluation of '{ref}'{on}: give an eval_id or a model spec with one "
            "(list them: selfevo sql \"SELECT eval_id, model, benchmark, mode FROM evals\")")
    return found[0]


def other_mode(store: Store, ref: EvalRef) -> EvalRef:
    """The evaluation of the other mode in the same run (direct ↔ refine)."""
    want = "refine" if ref.mode == "direct" else "direct"
    found = _evals(store, "run_id = ? AND mode = ? AND model = ? AND benchmark = ?",
                   [ref.run_id, want, ref.model, ref.benchmark])
    if not found:
        raise SelfevoError(f"eval {ref.eval_id[:12]} ({ref.mode}) has no {want} evaluation in "
                           "its run; rerun it with --mode both, or name --b")
    return found[0]


def _items(store: Store, eval_id: str) -> dict[str, dict[str, Any]]:
    rows = store.query_dicts("SELECT item_id, question, gold, prediction, correct, detail "
                             "FROM eval_items WHERE eval_id = ?", [eval_id])
    return {r["item_id"]: r for r in rows}


def _accuracy(correct: Sequence[bool]) -> dict[str, Any]:
    n, k = len(correct), sum(correct)
    lo, hi = wilson_interval(k, n)
    return {"correct": k, "n": n, "accuracy": k / n if n else 0.0, "ci_low": lo, "ci_high": hi}


def critic_on_items(store: Store, items: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The critic's quality over refine-mode ``eval_items`` rows (None without verdicts).

    For each item and sample: the first self-feedback verdict, against whether the initial
    answer it judged (read from the call ledger by its call id) matches the gold answer.
    """
    from curation.answers import answers_match, extract_answer

    pairs: list[tuple[str | None, str | None, str]] = []  # (verdict, answer call id, gold)
    for it in items:
        detail = json.loads(it["detail"]) if isinstance(it["detail"], str) else it["detail"] or {}
        steps, call_ids = detail.get("steps") or [], detail.get("answer_call_ids") or []
        for sample_steps, call_id in zip(steps, call_ids, strict=False):
            if sample_steps and call_id:
                pairs.append((sample_steps[0].get("verdict"), call_id, it["gold"]))
    if not pairs:
        return None
    ids = sorted({cid for _, cid, _ in pairs if cid})
    answers = dict(store.query("SELECT call_id, response FROM calls WHERE call_id IN "
                               "(SELECT unnest(?))", [ids]))
    known = [(v, answers[cid], gold) for v, cid, gold in pairs if cid in answers]
    quality = critic_quality([v for v, _, _ in known],
                             [answers_match(extract_answer(a), g) for _, a, g in known])
    return {**quality.as_dict(), "judged": len(known), "answer_missing": len(pairs) - len(known)}


def compare_pair(store: Store, a: EvalRef, b: EvalRef) -> dict[str, Any]:
    """Paired comparison of two evaluations on the items both answered (module docstring)."""
    items_a, items_b = _items(store, a.eval_id), _items(store, b.eval_id)
    shared = sorted(set(items_a) & set(items_b))
    if not shared:
        raise SelfevoError(f"{a.eval_id[:12]} and {b.eval_id[:12]} share no item ids: they are "
                           "not evaluations of the same items")
    differ = [i for i in shared if items_a[i]["question"] != items_b[i]["question"]]
    if differ:
        raise SelfevoError(f"item {differ[0]!r} has a different question in the two "
                           f"evaluations ({len(differ)} such items): not the same benchmark")
    right_a = [bool(items_a[i]["correct"]) for i in shared]
    right_b = [bool(items_b[i]["correct"]) for i in shared]
    table = paired_counts(right_a, right_b)
    out: dict[str, Any] = {
        "a": a.as_dict(), "b": b.as_dict(),
        "items": {"paired": len(shared), "only_a": len(items_a) - len(shared),
                  "only_b": len(items_b) - len(shared)},
        "accuracy": {"a": _accuracy(right_a), "b": _accuracy(right_b)},
        "table": asdict(table), "mcnemar_p": table.mcnemar_p(), "transitions": None,
        "critic": {side: critic_on_items(store, [items[i] for i in shared])
                   if ref.mode == "refine" else None
                   for side, ref, items in (("a", a, items_a), ("b", b, items_b))},
    }
    modes = (a.mode, b.mode)
    same_answers = a.run_id == b.run_id and a.model == b.model  # refine refined these answers
    if same_answers and modes in (("direct", "refine"), ("refine", "direct")):
        fixed, broken = (table.b_only, table.a_only) if modes[0] == "direct" else \
            (table.a_only, table.b_only)
        out["transitions"] = {"wrong_to_right": fixed, "right_to_wrong": broken}
    return out


def compare_evaluations(store: Store, a: str, bs: Sequence[str] = (), *,
                        bench: str | None = None, mode: str = "direct") -> list[dict[str, Any]]:
    """Compare evaluation ``a`` with each of ``bs`` (refs as in :func:`resolve_eval`).

    Without ``bs``: ``a``'s direct vs refine evaluations of the same run. Each result carries
    ``holm_p``, its McNemar p-value adjusted for the number of comparisons made.
    """
    ref_a = resolve_eval(store, a, bench=bench, mode=mode)
    if not bs:
        other = other_mode(store, ref_a)
        pairs = [(ref_a, other) if ref_a.mode == "direct" else (other, ref_a)]
    else:
        pairs = [(ref_a, resolve_eval(store, b, bench=bench or ref_a.benchmark, mode=mode))
                 for b in bs]
    return compare_pairs(store, pairs)


def compare_neighbours(store: Store, refs: Sequence[str], *, bench: str | None = None,
                       mode: str = "direct") -> list[dict[str, Any]]:
    """Compare each evaluation with the next (arms A0 → A1 → A2 …), Holm-adjusted."""
    if len(refs) < 2:
        raise SelfevoError("neighbour comparisons need at least two evaluations")
    resolved = [resolve_eval(store, r, bench=bench, mode=mode) for r in refs]
    return compare_pairs(store, list(zip(resolved, resolved[1:], strict=False)))


def compare_pairs(store: Store, pairs: Sequence[tuple[EvalRef, EvalRef]]
                  ) -> list[dict[str, Any]]:
    """:func:`compare_pair` for each pair, with ``holm_p`` adjusted over all of them."""
    results = [compare_pair(store, x, y) for x, y in pairs]
    for r, p in zip(results, holm([r["mcnemar_p"] for r in results]), strict=True):
        r["holm_p"] = p
    return results


def evaluation_pairs(store: Store, limit: int = 40) -> dict[str, list[tuple[EvalRef, EvalRef]]]:
    """The comparisons a store's evaluations invite (the report's paired section).

    ``refine``: direct vs refine of each evaluation run that scored both (the same answers,
    so the transitions say what refining changed). ``neighbours``: per benchmark, each
    direct evaluation of a model vs the previous direct evaluation of another model, in
    order of creation (rounds of an evolve, arms of an experiment). Only evaluations that
    have items; at most the ``limit`` newest evaluations are considered.
    """
    refs = list(reversed(_evals(store, "eval_id IN (SELECT DISTINCT eval_id FROM eval_items)",
                                [])[:limit]))
    by_run: dict[tuple[str, str, str], dict[str, EvalRef]] = {}
    for r in refs:
        by_run.setdefault((r.run_id, r.model, r.benchmark), {})[r.mode] = r
    refine = [(m["direct"], m["refine"]) for m in by_run.values() if len(m) == 2]
    neighbours, last = [], {}
    for r in refs:
        if r.mode != "direct":
            continue
        prev = last.get(r.benchmark)
        if prev is not None and prev.model != r.model:
            neighbours.append((prev, r))
        last[r.benchmark] = r
    return {"refine": refine, "neighbours": neighbours}


# -- display --------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _with_ci(cell: dict[str, Any]) -> str:
    return (f"{cell['correct']} / {cell['n']}  {_pct(cell['accuracy'])} "
            f"[{100 * cell['ci_low']:.1f}, {100 * cell['ci_high']:.1f}]")


def _critic_line(side: str, c: dict[str, Any]) -> str:
    sens, spec = c["sensitivity_ci"], c["specificity_ci"]
    right = c["accepted_right"] + c["rejected_right"]
    wrong = c["rejected_wrong"] + c["accepted_wrong"]
    line = (f"critic ({side}, first self-feedback on the initial answer): sensitivity "
            f"{_pct(c['sensitivity'])} [{100 * sens[0]:.1f}, {100 * sens[1]:.1f}] "
            f"({c['accepted_right']} of {right} right answers accepted), specificity "
            f"{_pct(c['specificity'])} [{100 * spec[0]:.1f}, {100 * spec[1]:.1f}] "
            f"({c['rejected_wrong']} of {wrong} wrong answers caught)")
    if c["no_verdict"] or c["answer_missing"]:
        line += f"; {c['no_verdict']} without a verdict, {c['answer_missing']} answers not found"
    return line


def print_paired(results: Sequence[dict[str, Any]]) -> None:
    """Each comparison as a small table and a few lines (fits 80 columns)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for r in results:
        a, b, t = r["a"], r["b"], r["table"]
        table = Table(box=box.SIMPLE_HEAD, title_justify="left", title=(
            f"paired on {r['items']['paired']} items of {a['benchmark']}"))
        table.add_column("")
        table.add_column("model", overflow="fold")
        table.add_column("mode")
        table.add_column("correct / n  accuracy [95% CI]", no_wrap=True)
        for side, ref in (("A", a), ("B", b)):
            table.add_row(side, ref["model"], ref["mode"], _with_ci(r["accuracy"][side.lower()]))
        console.print(table)
        if r["items"]["only_a"] or r["items"]["only_b"]:
            console.print(f"compared on the intersection: {r['items']['only_a']} items only in A "
                          f"and {r['items']['only_b']} only in B left out", highlight=False)
        console.print(f"right in both {t['both']} · only A {t['a_only']} · only B {t['b_only']} · "
                      f"neither {t['neither']}", highlight=False)
        discordant = t["a_only"] + t["b_only"]
        holm_note = f"; Holm-adjusted for {len(results)} comparisons: p = {r['holm_p']:.3g}" \
            if len(results) > 1 else ""
        console.print(f"exact McNemar (two-sided) on {discordant} discordant "
                      f"item{'s' if discordant != 1 else ''}: p = {r['mcnemar_p']:.3g}{holm_note}",
                      highlight=False)
        if r["transitions"]:
            tr = r["transitions"]
            console.print(f"refine vs direct: wrong→right {tr['wrong_to_right']}, right→wrong "
                          f"{tr['right_to_wrong']} (net {tr['wrong_to_right'] - tr['right_to_wrong']:+d})",
                          highlight=False)
        for side in ("a", "b"):
            if r["critic"][side]:
                console.print(_critic_line(side.upper(), r["critic"][side]), highlight=False)
