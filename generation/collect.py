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
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from corpus.records import make_record
from corpus.store import Store
from generation.backends.base import Backend, ChatRequest
from generation.backends.openai_backend import (
    Budget,
    BudgetExceeded,
    OpenAIBackend,
    OpenAIOptions,
    public_spec,
)
from generation.errors import GenerationError
from generation.ledger import Call, Ledger, Outcome

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

    def as_config(self) -> dict[str, Any]:
        """JSON-able config for the ``runs`` row (no secrets: only the key's variable name)."""
        d = asdict(self)
        d["responses_from"] = list(self.responses_from)
        d["teacher"] = public_spec(self.teacher)
        d["responder"] = public_spec(self.responder) if self.responder else None
        return d


@dataclass
class CollectProgress:
    """Live numbers for the progress bar (updated from the backend's thread)."""

    total: int = 0
    done: int = 0
    failed: int = 0
    cached: int = 0
    stage: str = ""
    started: float = field(default_factory=time.monotonic)


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

    def count(self, stage: str, key: str, n: int = 1) -> None:
        """Add to a per-stage call count."""
        d = self.calls.setdefault(stage, {"ok": 0, "failed": 0, "cached": 0})
        d[key] = d.get(key, 0) + n


@dataclass
class _Item:
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


def make_backend(spec: str, options: OpenAIOptions) -> Backend:
    """The backend for a model spec (``openai:`` gets the collection's HTTP options)."""
    if spec.startswith("openai:"):
        return OpenAIBackend.from_spec(spec, options)
    from generation.backends import load_backend

    return load_backend(spec)


def select_prompts(ledger: Ledger, where: str | None, limit: int | None) -> list[dict[str, Any]]:
    """Prompts matching ``where`` (SQL over ``prompts``) in import order."""
    sql = ("SELECT prompt_id, text, gold_answer, gold_rationale, source, meta FROM prompts "
           f"WHERE {where or 'true'} ORDER BY created_at, prompt_id")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    try:
        rows = ledger.query(sql)
    except Exception as exc:  # duckdb's parser/binder errors: the user's SQL
        msg = str(exc).splitlines()[0]
        raise GenerationError(f"--where {where!r} is not valid SQL over prompts: {msg}") from None
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

    def __init__(self, store: Store, config: CollectConfig, run_id: str,
                 on_progress: Callable[[CollectProgress, Any], None] | None = None):
        from generation.teachers import load_teacher
        from generation.templates import get_template

        self.store = store
        self.config = config
        self.run_id = run_id
        self.on_progress = on_progress
        if config.samples < 1:
            raise GenerationError("--samples must be at least 1")
        if config.samples > 1 and not config.responder:
            raise GenerationError("--samples needs --responder (samples are of the initial response)")
        self.offline = load_teacher(config.teacher)  # None: a model writes f and r̂
        self.reference = self.offline is not None
        self.templates = {name: get_template(name, config.template_set) for name in STAGES}
        budget = Budget(config.options.budget)
        self.responder = make_backend(config.responder, config.options) if config.responder else None
        self.teacher: Backend | None = None
        if not self.reference:
            same = config.responder == config.teacher and self.responder is not None
            self.teacher = self.responder if same else make_backend(config.teacher, config.options)
        for b in (self.responder, self.teacher):
            if isinstance(b, OpenAIBackend):
                b.budget = budget  # one budget over every backend of the run
        self.summary = CollectSummary()
        self.progress = CollectProgress()

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
    def run(self, ledger: Ledger) -> CollectSummary:
        """Collect every selected prompt; records are queued to the ledger as they complete."""
        t0 = time.monotonic()
        cfg = self.config
        prompts = select_prompts(ledger, cfg.where, cfg.limit)
        if not prompts:
            raise GenerationError(
                "no prompts match" + (f" --where {cfg.where!r}" if cfg.where else "")
                + "; import some with 'selfevo prompts import FILE'")
        self.summary.prompts = len(prompts)
        per_prompt = cfg.samples if self.responder else 1
        self.progress.total = len(prompts) * per_prompt * (
            (1 if self.responder else 0) + (0 if self.reference else 2))
        try:
            for start in range(0, len(prompts), cfg.chunk):
                self._chunk(ledger, prompts[start:start + cfg.chunk])
                if self.summary.stopped:
                    break
        finally:
            self.summary.elapsed = time.monotonic() - t0
            c = ledger.counts
            self.summary.prompt_tokens = c.prompt_tokens
            self.summary.completion_tokens = c.completion_tokens
            self.summary.cost = c.cost
            self.summary.resent_possibly_billed = c.resent_possibly_billed
            self.summary.sent = c.ok + c.failed
        return self.summary

    def _chunk(self, ledger: Ledger, prompts: list[dict[str, Any]]) -> None:
        cfg = self.config
        items: list[_Item] = []
        if self.responder is not None:
            tpl = self.templates["response"]
            params = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
            calls = [Call(ChatRequest(tpl.render(question=p["text"]), params, s), "response", tpl.hash)
                     for p in prompts for s in range(cfg.samples)]
            items = [_Item(p, s) for p in prompts for s in range(cfg.samples)]
            outs = self._complete(ledger, self.responder, calls, "response")
            for it, o in zip(items, outs, strict=True):
                if o.ok:
                    it.response, it.response_call_id = o.text, o.call_id
                    it.responder = self.responder.spec
            items = [it for it in items if it.response is not None]
        else:
            found = existing_responses(ledger, [p["prompt_id"] for p in prompts], cfg.responses_from)
            for p in prompts:
                rs = found.get(p["prompt_id"], [])
                if not rs:
                    self.summary.skipped_no_response += 1
                for resp, cid, who in rs:
                    items.append(_Item(p, 0, resp, cid, who))
        if self.summary.stopped or not items:
            return
        if self.reference:
            self._grade(ledger, items)
            return
        assert self.teacher is not None
        fb = self.templates["feedback"]
        calls = [Call(ChatRequest(fb.render(question=it.prompt["text"], response=it.response,
                                            gold_answer=self._gold(it)), self._teacher_params()),
                      "feedback", fb.hash) for it in items]
        from curation.verdicts import parse_verdict

        for it, o in zip(items, self._complete(ledger, self.teacher, calls, "feedback"), strict=True):
            if o.ok:
                it.feedback, it.feedback_call_id = o.text, o.call_id
                it.verdict, it.verdict_error = parse_verdict(o.text)
        items = [it for it in items if it.feedback is not None]
        if self.summary.stopped or not items:
            return
        rf = self.templates["refinement"]
        calls = [Call(ChatRequest(rf.render(question=it.prompt["text"], response=it.response,
                                            feedback=it.feedback, gold_answer=self._gold(it)),
                                  self._teacher_params()), "refinement", rf.hash) for it in items]

        def on_refinement(i: int, o: Outcome) -> None:
            if o.ok:  # the record lands as soon as its last part does
                ledger.add_records([self._record(items[i], o.text, o.call_id)])

        self._complete(ledger, self.teacher, calls, "refinement", on_refinement)

    def _gold(self, it: _Item) -> str | None:
        return it.prompt["gold_answer"] if self.config.use_gold else None

    def _teacher_params(self) -> dict[str, Any]:
        return {"temperature": 0.0, "max_tokens": self.config.max_tokens}

    def _grade(self, ledger: Ledger, items: list[_Item]) -> None:
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

    def _record(self, it: _Item, refinement: str | None, refinement_call_id: str | None
                ) -> dict[str, Any]:
        templates: dict[str, Any] = {"set": self.config.template_set}
        if it.response_call_id is not None and self.responder is not None:
            templates["response"] = self.templates["response"].hash
        if self.offline is not None:
            templates["teacher"] = self.offline.version
        else:
            templates["feedback"] = self.templates["feedback"].hash
            templates["refinement"] = self.templates["refinement"].hash
        v = it.verdict or "unparsed"
        self.summary.verdicts[v] = self.summary.verdicts.get(v, 0) + 1
        self.summary.records += 1
        return make_record(
            prompt_id=it.prompt["prompt_id"], kind="meta", response=it.response,
            feedback=it.feedback, verdict=it.verdict, refinement=refinement,
            verdict_error=it.verdict_error, responder=it.responder,
            teacher=self.offline.spec if self.offline else self.teacher.spec,  # type: ignore[union-attr]
            response_call_id=it.response_call_id, feedback_call_id=it.feedback_call_id,
            refinement_call_id=refinement_call_id, templates=templates,
            source=it.prompt["source"], meta={"sample_index": it.sample_index},
        )

    def _complete(self, ledger: Ledger, backend: Backend, calls: list[Call], stage: str,
                  then: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        self.progress.stage = stage

        def on_outcome(i: int, o: Outcome) -> None:
            p = self.progress
            if o.cached:
                p.cached += 1
                self.summary.count(stage, "cached")
            elif o.ok:
                p.done += 1
                self.summary.count(stage, "ok")
            elif o.error_kind not in ("budget", "interrupted"):
                p.failed += 1
                self.summary.count(stage, "failed")
            if then is not None:
                then(i, o)
            if self.on_progress is not None:
                self.on_progress(p, backend)

        try:
            outs = ledger.complete(backend, calls, on_outcome)
        except KeyboardInterrupt:
            self.summary.stopped = "interrupted"
            raise
        if getattr(backend, "stop_reason", None) == "budget":
            self.summary.stopped = "budget"
        return outs


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
    from rich.console import Console

    console, out = Console(stderr=True), Console()
    with Store.open(db, command="collect") as store:
        with store.run("collect", {**config.as_config(), "dry_run": dry}) as run:
            if dry:
                from generation.estimate import dry_run

                result = dry_run(store, config, run.run_id)
                run.counts.update({"dry_run_calls": sum(result.calls.values())})
                return result
            collector = Collector(store, config, run.run_id)
            ledger = Ledger(store, run.run_id)
            try:
                with ledger, _LiveProgress(console, collector, ledger):
                    summary = collector.run(ledger)
                    # Asked through the writer: it runs after the queued records are written.
                    summary.records_new = ledger.query(
                        "SELECT count(*) FROM records WHERE run_id = ?", [run.run_id])[0][0]
            except KeyboardInterrupt:
                console.print(summary_table(collector.summary))
                console.print("[yellow]interrupted: finished calls and records are stored; "
                              "rerun the same command to continue[/]")
                raise
            finally:
                collector.close()
                run.counts.update({k: v for k, v in ledger.counts.as_dict().items() if v})
                run.counts["records"] = collector.summary.records
            run.counts["records_new"] = summary.records_new
            out.print(summary_table(summary))
            check_budget_stop(summary, config)
            return summary


class _LiveProgress:
    """A rich progress bar fed by the collector's callbacks (throttled to ~10 updates/s)."""

    def __init__(self, console: Any, collector: Collector, ledger: Ledger):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.collector, self.ledger = collector, ledger
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                            console=console, disable=not console.is_terminal)
        self.task = self.bar.add_task("collect", total=None, info="")
        self._last = 0.0
        collector.on_progress = self.update

    def update(self, p: CollectProgress, backend: Any = None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        c = self.ledger.counts
        rate = (p.done + p.failed) / max(1e-9, now - p.started)
        info = (f"[green]done {p.done}[/] [red]failed {p.failed}[/] [cyan]cached {p.cached}[/] "
                f"{rate:.1f} req/s {c.prompt_tokens + c.completion_tokens:,} tok ${c.cost:.4f}")
        self.bar.update(self.task, description=p.stage or "collect", total=p.total or None,
                        completed=p.done + p.failed + p.cached, info=info)

    def __enter__(self) -> _LiveProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.update(self.collector.progress, force=True)
        self.bar.stop()


def summary_table(s: CollectSummary) -> Any:
    """The final summary of a collection: calls per stage, then the totals."""
    from rich.console import Group
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
    if s.stopped:
        rows.append(("stopped", s.stopped))
    for k, v in rows:
        totals.add_row(k, v)
    return Group(t, totals)
