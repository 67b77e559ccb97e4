"""``selfevo collect``: responses, teacher feedback with a verdict, and refinements → records.

For each selected prompt (``--where`` SQL over ``prompts``, ``--limit``), in chunks:

1. **r**, the initial response: from ``--responder SPEC`` (the ``response`` template; with
   ``--samples N`` and temperature > 0, N distinct cached samples via ``sample_index``), or,
   without a responder, the distinct responses of the prompt's existing records of the kinds
   in ``responses_from`` (default ``self`` and ``meta``: student answers imported with
   ``selfevo records import`` or earlier collections; ``qa`` answers are gold, not student
   answers, so they are left out). Prompts with no response are skipped and counted.
2. **f**, the teacher's feedback (``feedback`` template, with the gold answer when the prompt
   has one and ``use_gold``), parsed by :func:`curation.verdicts.parse_verdict`; unparseable
   feedback keeps ``verdict = NULL`` and the reason in ``verdict_error``.
3. **r̂**, the teacher's refinement (``refinement`` template).
4. A ``meta`` record per (prompt, r) linking the three call ids and the template hashes.

Offline teachers (``reference``, ``verifying``: :func:`generation.teachers.load_teacher`) grade
without calls; the prompt's ``meta`` reaches them (the verifying teacher re-derives from it).
Every model call goes through :class:`generation.ledger.Ledger`: cached when done before,
pending before sent, resumable after a crash. A record is written only when all its parts
exist; a prompt whose call failed gets its record on a later run (failed calls are retried).
Each stage's requests are built by :func:`stage_calls`, which ``--dry-run``
(:mod:`generation.estimate`) uses too, so the estimate prices exactly what the run sends.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb

from corpus.joblock import lake_lease
from corpus.records import make_record
from corpus.sqlfragment import SqlCondition, first_line, read_only
from corpus.store import Store
from generation.backends.base import Backend, ChatRequest
from generation.backends.openai_backend import (
    Budget,
    BudgetExceeded,
    OpenAIBackend,
    OpenAIOptions,
    public_spec,
)
from generation.batches import BatchesOpen, BatchOptions
from generation.errors import GenerationError
from generation.failures import Failures
from generation.ledger import UNSENT_KINDS, Call, Ledger, LedgerCounts, Outcome

if TYPE_CHECKING:
    from generation.estimate import DryRun

STAGES = ("response", "feedback", "refinement")


@dataclass
class CollectConfig:
    """Everything ``selfevo collect`` was asked to do (stored in ``runs.config``)."""

    teacher: str
    responder: str | None = None
    where: str | None = None
    limit: int | None = None
    template_set: str = "default"
    samples: int = 1
    temperature: float = 0.0  # the responder's; the teacher answers greedily
    max_tokens: int = 1024
    use_gold: bool = True  # show the teacher the gold answer when the prompt has one
    responses_from: tuple[str, ...] = ("self", "meta")
    chunk: int = 1000  # prompts per chunk: records land chunk by chunk
    options: OpenAIOptions = field(default_factory=OpenAIOptions)
    batch: BatchOptions | None = None  # --mode batch|file; None: online

    def as_config(self) -> dict[str, Any]:
        """JSON-able config for the ``runs`` row (no secrets: only the key's variable name)."""
        d = asdict(dataclasses.replace(self, batch=None))  # asdict would deep-copy its display
        d["batch"] = self.batch.as_config() if self.batch else None
        d["responses_from"] = list(self.responses_from)
        d["teacher"] = public_spec(self.teacher)
        d["responder"] = public_spec(self.responder) if self.responder else None
        return d

    def chunk_size(self, n_prompts: int) -> int:
        """Prompts per chunk: ``chunk`` online; all of them in batch mode (one batch a stage)."""
        return max(1, n_prompts) if self.batch is not None else self.chunk


@dataclass
class CollectSummary:
    """What a collection did."""

    prompts: int = 0
    skipped_no_response: int = 0
    records_new: int = 0
    records: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    calls: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> ok/failed/cached
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    resent_possibly_billed: int = 0
    elapsed: float = 0.0
    sent: int = 0
    stopped: str | None = None  # budget | interrupted
    failures: Failures = field(default_factory=Failures)  # failed requests, by kind

    def count(self, stage: str, key: str, n: int = 1) -> None:
        """Add to a per-stage call count."""
        d = self.calls.setdefault(stage, {"ok": 0, "failed": 0, "cached": 0})
        d[key] = d.get(key, 0) + n


@dataclass
class Item:
    """One (prompt, response) on its way to a record."""

    prompt: dict[str, Any]
    sample_index: int = 0
    response: str | None = None
    response_call_id: str | None = None
    responder: str | None = None
    feedback: str | None = None
    feedback_call_id: str | None = None
    verdict: str | None = None
    verdict_error: str | None = None


def call_stages(config: CollectConfig) -> tuple[str, ...]:
    """The stages whose calls a collection sends (none to an offline teacher)."""
    from generation.teachers import is_offline_teacher

    return (("response",) if config.responder else ()) + (
        () if is_offline_teacher(config.teacher) else ("feedback", "refinement"))


def load_templates(config: CollectConfig) -> dict[str, Any]:
    """The ``response``, ``feedback`` and ``refinement`` templates of the config's set."""
    from generation.templates import get_template

    return {name: get_template(name, config.template_set) for name in STAGES}


def stage_calls(stage: str, config: CollectConfig, templates: Mapping[str, Any],
                items: Sequence[Item]) -> list[Call]:
    """The calls of one stage for ``items``: the one place collect builds its requests.

    The run and ``--dry-run`` both build here, so what the dry run counts and prices is
    what the run sends. ``response`` asks the responder (its temperature, one call per
    sample); ``feedback`` and ``refinement`` ask the teacher greedily, with the prompt's gold
    answer unless ``use_gold`` is off.
    """
    if stage not in STAGES:
        raise GenerationError(f"unknown collect stage {stage!r}")
    tpl = templates[stage]
    if stage == "response":
        params = {"temperature": config.temperature, "max_tokens": config.max_tokens}
        return [Call(ChatRequest(tpl.render(question=it.prompt["text"]), params,
                                 it.sample_index), stage, tpl.hash) for it in items]
    return [Call(ChatRequest(tpl.render(**_teacher_variables(stage, it, config.use_gold)),
                             {"temperature": 0.0, "max_tokens": config.max_tokens}),
                 stage, tpl.hash) for it in items]


def _teacher_variables(stage: str, it: Item, use_gold: bool) -> dict[str, Any]:
    variables = {"question": it.prompt["text"], "response": it.response,
                 "gold_answer": it.prompt["gold_answer"] if use_gold else None}
    if stage == "refinement":
        variables["feedback"] = it.feedback
    return variables


def start_items(ledger: Ledger, config: CollectConfig, prompts: list[dict[str, Any]]
                ) -> tuple[list[Item], int]:
    """The items a chunk starts from, and how many prompts it skips (no response to judge).

    With a responder: one item per (prompt, sample), its response still to ask for.
    Without: one per distinct existing response of the kinds in ``responses_from``.
    """
    if config.responder:
        return [Item(p, s) for p in prompts for s in range(config.samples)], 0
    found = existing_responses(ledger, [p["prompt_id"] for p in prompts], config.responses_from)
    items = [Item(p, 0, resp, cid, who) for p in prompts
             for resp, cid, who in found.get(p["prompt_id"], [])]
    return items, sum(1 for p in prompts if p["prompt_id"] not in found)


def make_backend(spec: str, options: OpenAIOptions) -> Backend:
    """The backend for a model spec (``openai:`` gets the collection's HTTP options)."""
    if spec.startswith("openai:"):
        return OpenAIBackend.from_spec(spec, options)
    from generation.backends import load_backend

    return load_backend(spec)


def select_prompts(ledger: Ledger, where: str | SqlCondition | None, limit: int | None
                   ) -> list[dict[str, Any]]:
    """Prompts matching ``where`` (a checked condition over ``prompts``) in import order.

    The condition is evaluated read-only, on the ledger's writer thread (the store's only user
    during a collection)."""
    cond = SqlCondition.of(where, "--where")
    sql = ("SELECT prompt_id, text, gold_answer, gold_rationale, source, meta FROM prompts "
           f"WHERE {cond.sql if cond else 'true'} ORDER BY created_at, prompt_id")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"

    def read(con: Any) -> list[tuple[Any, ...]]:
        with read_only(con) as cur:
            return cur.execute(sql).fetchall()

    try:
        rows = ledger.writer.call(read)
    except duckdb.Error as exc:  # the binder's errors: the user's SQL
        raise GenerationError(f"--where {cond.text if cond else ''!r} is not valid SQL over "
                              f"prompts: {first_line(exc)}") from None
    cols = ["prompt_id", "text", "gold_answer", "gold_rationale", "source", "meta"]
    out = [dict(zip(cols, r, strict=True)) for r in rows]
    for p in out:
        p["meta"] = json.loads(p["meta"]) if p["meta"] else None
    return out


def existing_responses(ledger: Ledger, prompt_ids: list[str], kinds: tuple[str, ...]
                       ) -> dict[str, list[tuple[str, str | None, str | None]]]:
    """Distinct (response, response_call_id, responder) of existing records, per prompt."""
    import pyarrow as pa

    def run(con: Any) -> list[tuple[Any, ...]]:
        con.register("_pids", pa.table({"prompt_id": pa.array(prompt_ids, pa.string())}))
        try:
            return con.execute(
                "SELECT prompt_id, response, any_value(response_call_id), any_value(responder) "
                "FROM records WHERE response IS NOT NULL AND kind IN (SELECT unnest(?)) "
                "AND prompt_id IN (SELECT prompt_id FROM _pids) "
                "GROUP BY prompt_id, response ORDER BY prompt_id, min(created_at), response",
                [list(kinds)]).fetchall()
        finally:
            con.unregister("_pids")

    out: dict[str, list[tuple[str, str | None, str | None]]] = {}
    for pid, resp, cid, who in ledger.writer.call(run):
        out.setdefault(pid, []).append((resp, cid, who))
    return out


class Collector:
    """Runs one collection against an open store (see the module docstring)."""

    def __init__(self, store: Store, config: CollectConfig, run_id: str):
        from generation.teachers import load_teacher

        self.store = store
        self.config = config
        self.run_id = run_id
        if config.samples < 1:
            raise GenerationError("--samples must be at least 1")
        if config.samples > 1 and not config.responder:
            raise GenerationError("--samples needs --responder (samples are of the initial response)")
        self.offline = load_teacher(config.teacher)  # None: a model writes f and r̂
        self.reference = self.offline is not None
        self.templates = load_templates(config)
        budget = Budget(config.options.budget)
        self.responder = make_backend(config.responder, config.options) if config.responder else None
        self.teacher: Backend | None = None
        if not self.reference:
            same = config.responder == config.teacher and self.responder is not None
            self.teacher = self.responder if same else make_backend(config.teacher, config.options)
        for b in (self.responder, self.teacher):
            if isinstance(b, OpenAIBackend):
                b.budget = budget  # one budget over every backend of the run
        if config.batch is not None and not any(b.batchable for b in self.backends()):
            raise GenerationError(
                f"--mode {config.batch.mode} sends requests as Batch API / JSONL files: give "
                "an openai: --teacher or --responder (hf: models answer in process)")
        self.summary = CollectSummary()
        self.bars: StageBars | None = None

    def backends(self) -> list[Backend]:
        """The distinct backends in use."""
        out: list[Backend] = []
        for b in (self.responder, self.teacher):
            if b is not None and b not in out:
                out.append(b)
        return out

    def close(self) -> None:
        """Release the backends."""
        for b in self.backends():
            b.close()

    # -- the run ---------------------------------------------------------------------------
    def run(self, ledger: Ledger, display: Any = None) -> CollectSummary:
        """Collect every selected prompt; records are queued to the ledger as they complete.

        ``display`` (a :func:`corpus.display.progress` display) gets one task per stage.
        """
        t0 = time.monotonic()
        cfg = self.config
        prompts = select_prompts(ledger, cfg.where, cfg.limit)
        if not prompts:
            raise GenerationError(
                "no prompts match" + (f" --where {cfg.where!r}" if cfg.where else "")
                + "; import some with 'selfevo prompts import FILE'")
        # On a lake another machine may be collecting the same prompts: refuse rather than
        # send their calls twice (a file store's job lock already keeps it out).
        with lake_lease(self.store, [f"collect:{p['prompt_id']}" for p in prompts],
                        self.run_id, "selected prompts"):
            self._run(ledger, prompts, display, t0)
            ledger.writer.flush()  # the answers are in the ledger before the prompts are free
        return self.summary

    def _run(self, ledger: Ledger, prompts: list[dict[str, Any]], display: Any,
             t0: float) -> None:
        """The selected prompts, chunk by chunk (under their lease on a lake)."""
        cfg = self.config
        self.summary.prompts = len(prompts)
        if display is not None:
            expected = len(prompts) * (cfg.samples if self.responder else 1)
            self.bars = StageBars(display, call_stages(cfg), expected, self.summary,
                                  ledger.counts)
        chunk = cfg.chunk_size(len(prompts))
        try:
            for start in range(0, len(prompts), chunk):
                self._chunk(ledger, prompts[start:start + chunk])
                if self.summary.stopped:
                    break
        finally:
            if self.bars is not None:
                self.bars.finish()
            self.summary.elapsed = time.monotonic() - t0
            self._add_ledger_counts(ledger.counts)

    def _add_ledger_counts(self, c: LedgerCounts) -> None:
        self.summary.prompt_tokens = c.prompt_tokens
        self.summary.completion_tokens = c.completion_tokens
        self.summary.cost = c.cost
        self.summary.resent_possibly_billed = c.resent_possibly_billed
        self.summary.sent = c.ok + c.failed

    def _chunk(self, ledger: Ledger, prompts: list[dict[str, Any]]) -> None:
        items, skipped = start_items(ledger, self.config, prompts)
        self.summary.skipped_no_response += skipped
        if self.responder is not None:
            items = self._responses(ledger, items)
        if self.summary.stopped or not items:
            return
        if self.reference:
            self._grade(ledger, items)
            return
        items = self._feedback(ledger, items)
        if self.summary.stopped or not items:
            return
        self._refinements(ledger, items)

    def _responses(self, ledger: Ledger, items: list[Item]) -> list[Item]:
        assert self.responder is not None
        spec = self.responder.spec

        def keep(it: Item, o: Outcome) -> None:
            it.response, it.response_call_id, it.responder = o.text, o.call_id, spec

        return self._ask(ledger, self.responder, "response", items, keep)

    def _feedback(self, ledger: Ledger, items: list[Item]) -> list[Item]:
        from curation.verdicts import parse_verdict

        def keep(it: Item, o: Outcome) -> None:
            it.feedback, it.feedback_call_id = o.text, o.call_id
            it.verdict, it.verdict_error = parse_verdict(o.text)

        assert self.teacher is not None
        return self._ask(ledger, self.teacher, "feedback", items, keep)

    def _ask(self, ledger: Ledger, backend: Backend, stage: str, items: list[Item],
             keep: Callable[[Item, Outcome], None]) -> list[Item]:
        """One stage over ``items``; ``keep`` stores each answer; the answered items, in order."""
        calls = stage_calls(stage, self.config, self.templates, items)
        answered = []
        for it, o in zip(items, self._complete(ledger, backend, stage, calls), strict=True):
            if o.ok and o.text is not None:
                keep(it, o)
                answered.append(it)
        return answered

    def _refinements(self, ledger: Ledger, items: list[Item]) -> None:
        assert self.teacher is not None

        def on_refinement(i: int, o: Outcome) -> None:
            if o.ok:  # the record lands as soon as its last part does
                ledger.add_records([self._record(items[i], o.text, o.call_id)])

        calls = stage_calls("refinement", self.config, self.templates, items)
        self._complete(ledger, self.teacher, "refinement", calls, on_refinement)

    def _grade(self, ledger: Ledger, items: list[Item]) -> None:
        assert self.offline is not None
        rows = []
        for it in items:
            p = it.prompt
            c = self.offline.critique(p["text"], it.response, p["gold_answer"],
                                      p["gold_rationale"], p["meta"])
            if c.feedback is None:
                self.summary.count("feedback", "failed")
                continue
            it.feedback, it.verdict, it.verdict_error = c.feedback, c.verdict, c.verdict_error
            rows.append(self._record(it, c.refinement, None))
        ledger.add_records(rows)

    def _record(self, it: Item, refinement: str | None, refinement_call_id: str | None
                ) -> dict[str, Any]:
        v = it.verdict or "unparsed"
        self.summary.verdicts[v] = self.summary.verdicts.get(v, 0) + 1
        self.summary.records += 1
        return make_record(
            prompt_id=it.prompt["prompt_id"], kind="meta", response=it.response,
            feedback=it.feedback, verdict=it.verdict, refinement=refinement,
            verdict_error=it.verdict_error, responder=it.responder,
            teacher=self.offline.spec if self.offline else self.teacher.spec,  # type: ignore[union-attr]
            response_call_id=it.response_call_id, feedback_call_id=it.feedback_call_id,
            refinement_call_id=refinement_call_id, templates=self._template_hashes(it),
            source=it.prompt["source"], meta={"sample_index": it.sample_index},
        )

    def _template_hashes(self, it: Item) -> dict[str, Any]:
        templates: dict[str, Any] = {"set": self.config.template_set}
        if it.response_call_id is not None and self.responder is not None:
            templates["response"] = self.templates["response"].hash
        if self.offline is not None:
            templates["teacher"] = self.offline.version
        else:
            templates["feedback"] = self.templates["feedback"].hash
            templates["refinement"] = self.templates["refinement"].hash
        return templates

    def _complete(self, ledger: Ledger, backend: Backend, stage: str, calls: list[Call],
                  then: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        if self.bars is not None:
            self.bars.begin(stage, len(calls))

        def on_outcome(i: int, o: Outcome) -> None:
            if o.cached:
                self.summary.count(stage, "cached")
            elif o.ok:
                self.summary.count(stage, "ok")
            elif o.error_kind not in UNSENT_KINDS:
                self.summary.count(stage, "failed")
            if o.error_kind not in UNSENT_KINDS:
                self.summary.failures.add(o.ok, o.error_kind, o.error)
            if then is not None:
                then(i, o)
            if self.bars is not None:
                self.bars.update(stage)

        try:
            outs = ledger.complete(backend, calls, on_outcome)
        except KeyboardInterrupt:
            self.summary.stopped = "interrupted"
            raise
        if isinstance(backend, OpenAIBackend) and backend.stop_reason == "budget":
            self.summary.stopped = "budget"
        return outs


class StageBars:
    """Collect's progress: one task per stage on a :func:`corpus.display.progress` display.

    A task shows its stage's done / failed / cached calls, and the run's request rate,
    tokens and cost so far. Its total is the calls the stage is expected to make (one per
    prompt and sample), grown when more arrive; at the end, the calls it made.
    """

    def __init__(self, display: Any, stages: Sequence[str], expected: int,
                 summary: CollectSummary, counts: LedgerCounts):
        self.summary, self.counts = summary, counts
        self.started = time.monotonic()
        self.totals = dict.fromkeys(stages, expected)
        self.tasks = {stage: display.task(stage, expected) for stage in stages}

    def calls(self, stage: str) -> tuple[int, int, int]:
        """(done, failed, cached) of a stage so far."""
        d = self.summary.calls.get(stage, {})
        return d.get("ok", 0), d.get("failed", 0), d.get("cached", 0)

    def begin(self, stage: str, n: int) -> None:
        """``n`` more calls of ``stage`` start (a chunk's worth)."""
        finished = sum(self.calls(stage))
        if finished + n > self.totals[stage]:
            self.totals[stage] = finished + n
            self.tasks[stage].update(total=self.totals[stage], force=True)

    def update(self, stage: str, force: bool = False) -> None:
        """Redraw a stage's task (the display throttles unforced updates)."""
        done, failed, cached = self.calls(stage)
        c = self.counts
        rate = (c.ok + c.failed) / max(1e-9, time.monotonic() - self.started)
        info = (f"[green]done {done}[/] [red]failed {failed}[/] [cyan]cached {cached}[/] "
                f"{rate:.1f} req/s {c.prompt_tokens + c.completion_tokens:,} tok ${c.cost:.4f}")
        self.tasks[stage].update(completed=done + failed + cached, info=info, force=force)

    def finish(self) -> None:
        """Final numbers: each stage's total becomes the calls it made."""
        for stage, task in self.tasks.items():
            self.update(stage, force=True)
            task.update(total=sum(self.calls(stage)), force=True)


def check_budget_stop(summary: CollectSummary, config: CollectConfig) -> None:
    """Raise :class:`BudgetExceeded` with what to do next when the budget stopped the run."""
    if summary.stopped == "budget":
        raise BudgetExceeded(
            f"stopped before exceeding --budget ${config.options.budget:g} "
            f"(spent ${summary.cost:.4f}); completed calls are stored, rerun with a larger "
            "--budget to continue"
        )


# -- running it from the command line -----------------------------------------------------
def run_collect(db: str, config: CollectConfig, *, dry: bool = False) -> CollectSummary | DryRun:
    """Open the store, run (or dry-run) a collection under a ``runs`` row, show progress."""
    SqlCondition.of(config.where, "--where")  # a bad condition is refused before any write
    with Store.open(db, command="collect") as store:
        with store.run("collect", {**config.as_config(), "dry_run": dry}) as run:
            if dry:
                from generation.estimate import dry_run

                result = dry_run(store, config, run.run_id)
                run.counts.update({"dry_run_calls": sum(result.calls.values())})
                return result
            summary = _collect(store, config, run)
            check_budget_stop(summary, config)
            summary.failures.check_any_succeeded(
                "requests", summary.records,
                "Check that the server is up and the API key variable is set, then rerun "
                "(failed calls are retried).")
            return summary


def _collect(store: Store, config: CollectConfig, run: Any) -> CollectSummary:
    """The real run: progress on stderr, the summary table on stdout."""
    from rich.console import Console

    from corpus.display import progress, stderr_console

    console = stderr_console()
    collector = Collector(store, config, run.run_id)
    ledger = Ledger(store, run.run_id, batch=config.batch)
    try:
        with ledger, progress(console=console) as display:
            if config.batch is not None:
                config.batch.display = display  # one task per batch while polling
            summary = collector.run(ledger, display)
            if ledger.waiting:  # what is answered went on; the rest waits for its batches
                from generation.batches.drive import stop_if_waiting

                stop_if_waiting(ledger)
            # Asked through the writer: it runs after the queued records are written.
            summary.records_new = ledger.query(
                "SELECT count(*) FROM records WHERE run_id = ?", [run.run_id])[0][0]
    except KeyboardInterrupt:
        console.print(summary_table(collector.summary))
        console.print("[yellow]interrupted: finished calls and records are stored; "
                      "rerun the same command to continue[/]")
        raise
    except BatchesOpen:
        console.print(summary_table(collector.summary))
        raise
    finally:
        collector.close()
        run.counts.update({k: v for k, v in ledger.counts.as_dict().items() if v})
        run.counts["records"] = collector.summary.records
    run.counts["records_new"] = summary.records_new
    Console().print(summary_table(summary))
    return summary


def summary_table(s: CollectSummary) -> Any:
    """The final summary of a collection: calls per stage, then the totals."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="selfevo collect")
    t.add_column("calls")
    for col in ("sent ok", "failed", "cached"):
        t.add_column(col, justify="right")
    for stage in STAGES:
        d = s.calls.get(stage)
        if d:
            t.add_row(stage, str(d.get("ok", 0)), str(d.get("failed", 0)), str(d.get("cached", 0)))
    totals = Table.grid(padding=(0, 2))
    totals.add_column(style="bold")
    totals.add_column()
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(s.verdicts.items())) or "-"
    rate = s.sent / s.elapsed if s.elapsed else 0.0
    rows = [
        ("prompts", f"{s.prompts}" + (f" ({s.skipped_no_response} without a response)"
                                      if s.skipped_no_response else "")),
        ("records", f"{s.records} ({s.records_new} new); verdicts: {verdicts}"),
        ("tokens", f"{s.prompt_tokens:,} prompt + {s.completion_tokens:,} completion"),
        ("cost", f"${s.cost:.4f}"),
        ("requests", f"{s.sent} in {s.elapsed:.1f}s ({rate:.1f}/s); re-sent possibly billed: "
                     f"{s.resent_possibly_billed}"),
    ]
    if s.failures.failed:
        rows.append(("failed", f"[red]{escape(s.failures.describe())}[/]; failed calls are "
                               "retried on the next run"))
    if s.stopped:
        rows.append(("stopped", s.stopped))
    for k, v in rows:
        totals.add_row(k, v)
    return Group(t, totals)
