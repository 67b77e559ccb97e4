"""Self-evolution rounds (SELF §3.2): the student improves itself on unlabeled prompts.

Round t (1..T), each stage a ``runs`` row ``evolve <stage>`` whose config names the evolve
and the round, and whose parent is the ``evolve`` run:

1. ``generate`` — the current student M_t answers the round's prompts (r), writes
   self-feedback with a verdict (f) and a self-refinement (r̂), then — when the filter judges
   r̂, as SELF does — self-feedback on r̂ too (the layout of :mod:`schemas.conversation`,
   through the call ledger); records ``kind='self', round=t`` with both verdicts
   (``verdict``, ``refined_verdict``) and their call ids. With ``generate_prompts`` it first
   asks M_t for new questions in the style of seed prompts (their provenance: source
   ``evolve:<name>``, meta with the seed prompt ids and the call id).
2. ``filter`` — curation steps over the round's records (default ``verdict`` with
   ``verdict_on='refined'``: keep records whose self-feedback judges the refined answer
   correct); a ``curate filter`` run, every decision a row.
3. ``snapshot`` — ``evolve-<name>-r<t>``: the kept records plus the meta-skill snapshot
   (replay) and, for ``restart``, every earlier round's kept records.
4. ``export`` — the snapshot as Parquet under ``<out>/r<t>/data``, self records in the
   ``self_layout`` (default ``answer``: SELF's D_self = {(p, r̂)}, the student learns to
   answer p with r̂), meta and qa records in theirs; the manifest names the layouts.
5. ``train`` — M_{t+1}: ``restart`` trains from the base on the snapshot; ``continual``
   trains from M_t's merged weights; the checkpoint is registered in ``models``.
6. ``eval`` — each ``--eval`` benchmark, direct and/or refine, linked to the model.

Round 0 has only ``eval`` (the starting student). A stage that finished is never redone: a
killed ``evolve`` re-run with the same options resumes at the first unfinished stage (the
stage's outputs are kept in its run's ``counts``; generation resumes from the call cache).

While a stage runs, a ``corpus.display`` bar shows it (one per stage, when a display is
given); when it ends, ``log`` hears one readable line (:func:`stage_line`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from corpus.inserts import insert_absent
from corpus.joblock import lake_lease
from corpus.records import insert_prompts, insert_records, make_prompt, make_record
from corpus.snapshots import sql_literal
from corpus.store import Run, Store
from schemas.identity import content_id
from selfevo import SelfevoError

if TYPE_CHECKING:
    from corpus.display import Display, Tracker

STAGES = ("generate", "filter", "snapshot", "export", "train", "eval")
STRATEGIES = ("restart", "continual")
#: What the verdict filter of a round reads: the student's verdict on r̂ (SELF), on r, or both.
VERDICT_ON = ("refined", "response", "both")
#: How kept self records train (schemas.conversation): p → r̂ (SELF), + the meta turns, or those.
SELF_LAYOUTS = ("answer", "meta+answer", "meta")


@dataclass
class EvolveConfig:
    """Everything an evolve run depends on; its hash names the run when no name is given."""

    student: str  # model spec of M_1, e.g. hf:BASE+ADAPTER (the meta-skill student)
    base: str  # base model folder (or alias) that restart training starts from
    prompts: str  # SQL condition over `prompts` choosing the unlabeled pool
    rounds: int = 1  # self-evolution rounds T
    meta: str | None = None  # meta-skill snapshot replayed in every round's training data
    strategy: str = "restart"  # restart (from base, all rounds) | continual (from M_t)
    filters: list[str] = field(default_factory=lambda: ["verdict"])  # curation step specs
    verdict_on: str = "refined"  # the verdict steps judge: refined (SELF) | response | both
    self_layout: str = "answer"  # kept self records train: answer (SELF's p → r̂) | meta+answer | meta
    samples: int = 1  # answers per prompt (temperature > 0 makes them differ)
    prompts_per_round: int | None = None  # a fresh deterministic sample of the pool per round
    generate_prompts: int = 0  # new questions M_t writes per round, in the seeds' style
    evals: list[str] = field(default_factory=list)  # gsm8k:PATH | svamp:PATH | FILE | store:SQL
    eval_modes: list[str] = field(default_factory=lambda: ["direct", "refine"])
    eval_limit: int | None = None  # items per benchmark
    gen: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.0, "max_tokens": 256})
    train: dict[str, Any] = field(default_factory=dict)  # trainer.config.TrainConfig overrides
    out: str = "evolve-out"  # exports and checkpoints go under <out>/r<t>/
    name: str | None = None  # evolve name (default: derived from the rest of the config)
    seed: int = 0
    # OpenAI-compatible server (vLLM with runtime LoRA loading) serving ``base``: each round's
    # adapter is loaded there and M_{t+1} is reached as openai:<name>-r<t+1>@serve
    serve: str | None = None

    def resolved_name(self) -> str:
        """The given name, or ``e`` + 8 hex digits of the config's content hash."""
        if self.name:
            return self.name
        d = dataclasses.asdict(self)
        d.pop("name")
        if d["serve"] is None:  # names of runs made before --serve existed stay the same
            d.pop("serve")
        return "e" + content_id(d).split(":")[1][:8]

    def filter_specs(self) -> list[str]:
        """The round's curation steps, each ``verdict`` step judging ``verdict_on``.

        A ``verdict`` step that names its own ``on=`` must agree with ``verdict_on``: the
        generate stage asks for feedback on r̂ only when a filter will read it.
        """
        out = []
        for spec in self.filters:
            step = _parse_filter(spec)
            if step.filter.name == "verdict":
                if not re.search(r"[:,]\s*on\s*=", spec):
                    spec = f"{spec}{',' if ':' in spec else ':'}on={self.verdict_on}"
                elif step.filter.on != self.verdict_on:
                    raise SelfevoError(f"--filter {spec!r} judges another verdict than "
                                       f"--verdict-on {self.verdict_on}: use --verdict-on "
                                       f"{step.filter.on} (it sets every verdict step)")
            out.append(spec)
        return out

    def filter_steps(self) -> list[Any]:
        """The configured filter steps of every round (:meth:`filter_specs` parsed)."""
        return [_parse_filter(s) for s in self.filter_specs()]

    def judges_refinement(self) -> bool:
        """Whether a round's filter reads the student's verdict on r̂ (then it is asked)."""
        return any(s.filter.name == "verdict" and s.filter.on in ("refined", "both")
                   for s in self.filter_steps())

    def check(self) -> None:
        """Refuse impossible settings before anything runs."""
        if self.rounds < 1:
            raise SelfevoError("--rounds must be at least 1")
        if self.strategy not in STRATEGIES:
            raise SelfevoError(f"--strategy {self.strategy!r}: use restart or continual")
        if self.samples < 1:
            raise SelfevoError("--samples must be at least 1")
        if self.strategy == "continual" and not self.student.startswith("hf:"):
            raise SelfevoError("--strategy continual trains from M_1's weights: give --student "
                               "as hf:BASE+ADAPTER (an openai: student works with restart)")
        if self.serve is not None:
            if self.strategy != "restart" or self.train.get("full"):
                raise SelfevoError("--serve loads each round's LoRA adapter over the served base "
                                   "model: use --strategy restart and LoRA training (not full)")
            if not self.serve.startswith(("http://", "https://")):
                raise SelfevoError(f"--serve {self.serve!r}: give the server's base URL, e.g. "
                                   "http://127.0.0.1:8000/v1")
        bad = [m for m in self.eval_modes if m not in ("direct", "refine")]
        if bad:
            raise SelfevoError(f"--eval-mode {bad}: use direct, refine or both")
        if self.verdict_on not in VERDICT_ON:
            raise SelfevoError(f"--verdict-on {self.verdict_on!r}: use {', '.join(VERDICT_ON)}")
        if self.self_layout not in SELF_LAYOUTS:
            raise SelfevoError(f"--self-layout {self.self_layout!r}: use "
                               f"{', '.join(SELF_LAYOUTS)}")
        self.filter_steps()  # every step and parameter checked now
        from trainer.config import TrainConfig

        fixed = {"data", "base", "out", "seed", "progress", "resume"}  # set by each round
        clash = sorted(fixed & set(self.train))
        if clash:
            raise SelfevoError(f"--train {', '.join(clash)}: set by evolve itself for each round")
        try:  # every setting checked now, not after a round of generation
            TrainConfig.from_dict({**self.train, "data": "-", "base": "-", "out": "-"})
        except (ValueError, TypeError) as exc:
            raise SelfevoError(f"--train {exc}") from None


@dataclass
class RoundResult:
    """What one round produced (read back from the stage runs)."""

    round: int
    records: int = 0
    kept: int = 0
    snapshot: str | None = None
    snapshot_n: int = 0
    model_id: str | None = None
    student: str | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)


def _public(spec: str) -> str:
    """A model spec as stored: an openai: spec's URLs without credentials."""
    from generation.backends.openai_backend import public_spec

    return public_spec(spec)


def _identity(spec: str) -> str:
    """A model spec as records and prompts name it, like its calls do: ``hf:`` by readable
    names (no machine paths), ``openai:`` without credentials."""
    if spec.startswith("hf:"):
        from generation.backends.hf import identity_spec

        return identity_spec(spec)
    return _public(spec)


def _public_url(url: str | None) -> str | None:
    from generation.backends.openai_backend import strip_credentials

    return strip_credentials(url) if url else None


class Evolution:
    """One evolve run over a store; :meth:`run` executes (or resumes) every round.

    ``log`` hears one line per stage; ``display`` (a ``corpus.display`` Display) gets a bar
    per stage while it runs.
    """

    def __init__(self, store: Store, config: EvolveConfig,
                 log: Callable[[str], None] = print, display: Display | None = None,
                 batch: Any = None):
        config.check()
        self.store = store
        self.config = config
        # --mode batch|file for the generate stage (how requests travel, not what the
        # evolve is: it is not part of the config or the name)
        self.batch = batch
        self.name = config.resolved_name()
        self.out = Path(config.out) / self.name
        self.log = log
        self.display = display
        self.tracker: Tracker | None = None  # the running stage's bar
        self._backends: dict[str, Any] = {}
        self.run_id: str | None = None

    # -- stage bookkeeping -----------------------------------------------------------------
    def finished(self, stage: str, round: int) -> dict[str, Any] | None:
        """The counts of the finished stage, or None when it has not finished."""
        rows = self.store.query(
            "SELECT counts FROM runs WHERE command = ? AND status = 'ok' "
            "AND json_extract_string(config, '$.evolve') = ? "
            "AND CAST(json_extract(config, '$.round') AS INTEGER) = ? "
            "ORDER BY started_at DESC LIMIT 1",
            [f"evolve {stage}", self.name, round],
        )
        if not rows:
            return None
        return json.loads(rows[0][0] or "{}")

    def stage(self, stage: str, round: int, fn: Callable[[Run], None],
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run ``fn`` as stage ``stage`` of ``round`` unless it already finished."""
        done = self.finished(stage, round)
        if done is not None:
            self.log(f"  round {round} {stage}: already done, skipped")
            return done
        config = {"evolve": self.name, "round": round, "stage": stage, **(extra or {})}
        self.tracker = self.display.task(f"round {round} {stage}") if self.display else None
        with self.store.run(f"evolve {stage}", config, parent_run_id=self.run_id) as run:
            fn(run)
        if self.tracker is not None:
            self.tracker.finish()
        self.log(f"  {stage_line(stage, round, run.counts)}")
        return run.counts

    def refine_progress(self, label: str) -> Any:
        """A ``progress(stage, advance, total)`` for self-refine that moves the running
        stage's one bar (or None without a display): each request phase (answer,
        self-feedback, self-refinement) restarts it under its name, e.g.
        ``round 1 generate: self-feedback 12/50``."""
        tracker = self.tracker
        if tracker is None:
            return None

        def on_progress(phase: str, advance: int, total: int) -> None:
            if advance == 0:  # a phase starts
                tracker.restart(f"{label}: {phase}", total)
            else:
                tracker.advance(advance)

        return on_progress

    def backend(self, spec: str) -> Any:
        """The model behind ``spec`` (loaded once per process)."""
        if spec not in self._backends:
            for old in self._backends.values():  # one model in memory at a time
                old.close()
            self._backends.clear()
            from generation.batches import load_backend_for

            self._backends[spec] = load_backend_for(spec, self.batch)
        return self._backends[spec]

    def close(self) -> None:
        """Release loaded models."""
        for b in self._backends.values():
            b.close()
        self._backends.clear()

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> list[RoundResult]:
        """Run round 0's evaluation, then every round's stages; returns per-round results."""
        cfg = self.config
        resolved = dataclasses.asdict(cfg) | {"name": self.name, "student": _public(cfg.student),
                                              "serve": _public_url(cfg.serve)}
        results = []
        with self.store.run("evolve", resolved) as run:
            self.run_id = run.run_id
            try:
                # On a lake: one live evolve per name (its stages resume from the store, so
                # two at once would each redo the other's); a file store's job lock does this.
                with lake_lease(self.store, [f"evolve:{self.name}"], run.run_id,
                                f"evolve {self.name!r}"):
                    student = cfg.student
                    results.append(self.round_zero(student))
                    for t in range(1, cfg.rounds + 1):
                        result = self.one_round(t, student)
                        results.append(result)
                        student = result.student or student
                run.add("rounds", cfg.rounds)
            finally:
                self.close()
        return results

    def round_zero(self, student: str) -> RoundResult:
        """Evaluate the starting student (the baseline of every later round)."""
        result = RoundResult(round=0, student=student)
        if self.config.evals:
            counts = self.stage("eval", 0, lambda run: self.evaluate(run, student, 0, None),
                                {"student": _public(student)})
            result.evals = counts.get("evals", [])
        return result

    def one_round(self, t: int, student: str) -> RoundResult:
        """Stages 1-6 of round ``t`` with student M_t = ``student``."""
        cfg = self.config
        res = RoundResult(round=t)
        gen = self.stage("generate", t, lambda run: self.generate(run, t, student),
                         {"student": _public(student), "gen": cfg.gen, "samples": cfg.samples})
        res.records = gen.get("records", 0)
        filt = self.stage("filter", t, lambda run: self.filter(run, t, student),
                          {"filters": cfg.filter_specs(), "verdict_on": cfg.verdict_on})
        res.kept = filt.get("kept", 0)
        snap = self.stage("snapshot", t, lambda run: self.snapshot(run, t, filt["filter_run"]),
                          {"strategy": cfg.strategy, "meta": cfg.meta})
        res.snapshot, res.snapshot_n = snap["snapshot"], snap["n"]
        exp = self.stage("export", t, lambda run: self.export(run, t, res.snapshot),
                         {"layouts": {"self": cfg.self_layout}})
        trained = self.stage("train", t, lambda run: self.train(run, t, student, exp["dir"]),
                             {"train": cfg.train, "strategy": cfg.strategy})
        res.model_id, res.student = trained["model_id"], trained["student"]
        if trained.get("served"):  # again on resume: the server may have restarted since
            self.serve_adapter(trained["served"], trained["final_dir"])
            res.student = f"openai:{trained['served']}@{cfg.serve}"  # stored without credentials
        if cfg.evals:
            ev = self.stage("eval", t, lambda run: self.evaluate(
                run, res.student, t, res.model_id), {"student": _public(res.student)})
            res.evals = ev.get("evals", [])
        return res

    # -- stages ----------------------------------------------------------------------------
    def round_prompts(self, t: int) -> list[dict[str, Any]]:
        """The pool's prompts for round ``t``: all, or a deterministic per-round sample."""
        import duckdb

        from corpus.sqlfragment import SqlCondition, first_line, read_only

        cfg = self.config
        pool = SqlCondition(cfg.prompts, "--prompts")
        limit = f"LIMIT {int(cfg.prompts_per_round)}" if cfg.prompts_per_round else ""
        try:
            with self.store.connection() as con, read_only(con) as cur:
                rows = cur.execute(f"SELECT prompt_id, text FROM prompts WHERE {pool.sql} "
                                   f"ORDER BY md5(prompt_id || ?) {limit}",
                                   [f"{self.name}/{t}/{cfg.seed}"]).fetchall()
        except duckdb.Error as exc:  # a bad --prompts condition is the user's to fix
            raise SelfevoError(f"--prompts failed: {first_line(exc)}") from None
        return [{"prompt_id": pid, "text": text} for pid, text in rows]

    def new_prompts(self, run: Run, t: int, student: str, seeds: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
        """Ask M_t for ``generate_prompts`` new questions in the style of seed prompts."""
        from generation.backends.base import ChatRequest
        from generation.ledger import ledger_generate
        from generation.templates import get_template

        n = self.config.generate_prompts
        if n <= 0 or not seeds:
            return []
        template = get_template("new_question")
        requests, seed_ids = [], []
        for i in range(n):
            shots = [seeds[(i * 3 + j) % len(seeds)] for j in range(min(3, len(seeds)))]
            seed_ids.append([s["prompt_id"] for s in shots])
            requests.append(ChatRequest(
                template.render(examples=[s["text"] for s in shots]),
                {"temperature": 1.0, "max_tokens": 160, "seed": self.config.seed}, i))
        out = ledger_generate(self.backend(student), self.store, run.run_id,
                              self.refine_progress(f"round {t} generate"), batch=self.batch)(
            requests, "new-question", template.hash)
        rows = []
        for (res, call_id), ids in zip(out, seed_ids, strict=True):
            text = (res.text or "").strip()
            if not res.ok or len(text) < 10:
                run.add("new_prompts_failed")
                continue
            rows.append(make_prompt(text, source=f"evolve:{self.name}", split="evolve", meta={
                "evolve": self.name, "round": t, "model": _identity(student), "seeds": ids,
                "call_id": call_id, "template": template.hash}))
        run.add("new_prompts", self.store.transact(
            lambda con: insert_prompts(con, rows, run.run_id)))
        return [{"prompt_id": r["prompt_id"], "text": r["text"]} for r in rows]

    def generate(self, run: Run, t: int, student: str) -> None:
        """Stage 1: M_t answers, criticises and refines; records kind=self, round=t.

        When every request failed (the student's server is down) the stage fails instead of
        going on with no records."""
        from generation.failures import Failures
        from selfevo.refine import RefinePrompts, RefineStep, self_refine

        cfg = self.config
        prompts = self.round_prompts(t)
        if not prompts:
            raise SelfevoError(f"--prompts {cfg.prompts!r} selects no prompts; check it with "
                               f"selfevo sql \"SELECT count(*) FROM prompts WHERE {cfg.prompts}\"")
        prompts += self.new_prompts(run, t, student, prompts)
        rows = pa.table({"evolve": pa.array([self.name] * len(prompts), pa.string()),
                         "round": pa.array([t] * len(prompts), pa.int32()),
                         "prompt_id": pa.array([p["prompt_id"] for p in prompts], pa.string()),
                         "run_id": pa.array([run.run_id] * len(prompts), pa.string())})
        self.store.transact(
            lambda con: insert_absent(con, "evolve_prompts", ("evolve", "round", "prompt_id"), rows))
        tp = RefinePrompts()
        hashes = tp.hashes()
        questions = [p for p in prompts for _ in range(cfg.samples)]
        indices = [j for _ in prompts for j in range(cfg.samples)]
        self.log(f"  round {t} generate: {len(questions)} answers from {student}")
        results = self_refine(self.backend(student), [p["text"] for p in questions], steps=1,
                              params=cfg.gen, sample_indices=indices, prompts=tp,
                              store=self.store, run_id=run.run_id,
                              progress=self.refine_progress(f"round {t} generate"),
                              judge=cfg.judges_refinement(), batch=self.batch)
        rows = []
        for p, r in zip(questions, results, strict=True):
            step = r.steps[0] if r.steps else None
            if r.answer is None or step is None or step.feedback is None:
                run.add("failed")
                continue
            judged = r.judgement or RefineStep(feedback=None, verdict=None)
            rows.append(make_record(
                prompt_id=p["prompt_id"], kind="self", round=t, response=r.answer,
                feedback=step.feedback, verdict=step.verdict, refinement=step.refinement,
                verdict_error=step.verdict_error, responder=_identity(student),
                teacher=_identity(student),
                response_call_id=r.answer_call_id, feedback_call_id=step.feedback_call_id,
                refinement_call_id=step.refinement_call_id,
                refined_feedback=judged.feedback, refined_verdict=judged.verdict,
                refined_verdict_error=judged.verdict_error or judged.error,
                refined_feedback_call_id=judged.feedback_call_id,
                templates={"response": hashes["answer"], "feedback": hashes["self_feedback"],
                           "refinement": hashes["self_refinement"]},
                source=f"evolve:{self.name}",
                meta={"evolve": self.name, "sample_index": r.sample_index}))
        failures = Failures()
        for r in results:
            failures.add(not r.request_failed, r.error_kind, r.error)
        failures.check_any_succeeded(f"round {t} questions", len(rows),
                                     f"Is {_public(student)} reachable? Rerun to continue.")
        run.add("new_records", self.store.transact(
            lambda con: insert_records(con, rows, run.run_id)))
        run.add("records", len(rows))
        run.add("prompts", len(prompts))
        run.add("r_correct", sum(r["verdict"] == "correct" for r in rows))
        if cfg.judges_refinement():
            run.add("refined_correct", sum(r["refined_verdict"] == "correct" for r in rows))

    def round_selection(self, t: int, student: str) -> Any:
        """The records of round ``t`` written by M_t for this evolve's prompts."""
        from curation.selection import Selection

        # _public: records a generate stage wrote before responders were readable names
        who = ", ".join(sql_literal(s) for s in sorted({_identity(student), _public(student)}))
        where = (f"responder IN ({who}) AND prompt_id IN (SELECT prompt_id FROM "
                 f"evolve_prompts WHERE evolve = {sql_literal(self.name)} AND round = {t})")
        return Selection(where=where, kind="self", round=t)

    def filter(self, run: Run, t: int, student: str) -> None:
        """Stage 2: the curation steps over the round's records, as a ``curate filter`` run."""
        from curation.curate import check_labels, run_filters

        steps = self.config.filter_steps()
        check_labels(steps)
        fr = run_filters(self.store, steps, self.round_selection(t, student),
                         parent_run_id=run.run_id, progress=self.tracker)
        run.counts.update(filter_run=fr.run_id, selected=fr.selected, kept=fr.kept)
        if fr.selected and not fr.kept:  # the round adds nothing: say so, and where to look
            self.log(f"  round {t} filter: kept none of {fr.selected} self records, so this "
                     f"round's snapshot is replay only; why: selfevo sql --db {shlex.quote(str(self.store.spec))} "
                     f"\"SELECT step, reason, count(*) FROM decisions WHERE run_id = "
                     f"'{fr.run_id}' GROUP BY ALL\"")

    def snapshot(self, run: Run, t: int, filter_run: str) -> None:
        """Stage 3: kept records + meta replay (+ earlier rounds for restart)."""
        from corpus.snapshots import create_snapshot, find_snapshot

        cfg = self.config
        name = f"evolve-{self.name}-r{t}"
        parts = [f"record_id IN (SELECT record_id FROM record_passed WHERE run_id = "
                 f"{sql_literal(filter_run)} AND passed_all)"]
        if cfg.meta:
            parts.append(_in_snapshot(cfg.meta))
        if cfg.strategy == "restart" and t > 1:
            parts.append(_in_snapshot(f"evolve-{self.name}-r{t - 1}"))
        with self.store.connection() as con:
            snap = find_snapshot(con, name)  # made before a kill: immutable, so reuse it
        if snap is None:
            snap = create_snapshot(self.store, name, " OR ".join(parts),
                                   note=f"evolve {self.name} round {t} ({cfg.strategy})")
        run.counts.update(snapshot=name, n=snap.n, content_hash=snap.content_hash)

    def export(self, run: Run, t: int, snapshot: str) -> None:
        """Stage 4: the snapshot as a Parquet export the trainer reads, self records in
        ``self_layout`` (named in the manifest)."""
        from corpus.export import export_snapshot

        out = self.out / f"r{t}" / "data"
        out.parent.mkdir(parents=True, exist_ok=True)
        manifest = export_snapshot(self.store, snapshot, "parquet", out,
                                   {"self": self.config.self_layout})
        run.counts.update(dir=str(out), n=manifest.n, content_hash=manifest.content_hash,
                          layouts=manifest.layouts)

    def train(self, run: Run, t: int, student: str, data: str) -> None:
        """Stage 5: train M_{t+1} and register it in ``models``."""
        from generation.backends.aliases import resolve_model
        from selfevo.checkpoints import training_progress
        from trainer.config import TrainConfig
        from trainer.train import train

        cfg = self.config
        # the generating model is not needed while training: drop it, so the trainer's
        # model is the only one in memory (it held ~0.55 GB beside the demo's training)
        self.close()
        out = self.out / f"r{t}" / "model"
        if cfg.strategy == "restart":
            base = resolve_model(cfg.base)
        else:
            base = self.merged_weights(student, t)
        overrides = dict(cfg.train)
        # progress=False: the trainer's own output is off; the stage's bar shows the steps.
        tc = TrainConfig.from_dict({**overrides, "data": data, "base": base, "out": str(out),
                                    "seed": cfg.seed, "progress": False,
                                    "resume": (out / "checkpoints").exists()})
        result = train(tc, log=lambda msg: None, on_step=training_progress(self.tracker)
                       if self.tracker is not None else None)
        from selfevo.checkpoints import register_checkpoint

        model_id = register_checkpoint(self.store, run, result, tc)
        spec = f"hf:{result.final_dir}" if tc.full else f"hf:{base}+{result.final_dir}"
        if cfg.serve:
            served = f"{self.name}-r{t + 1}"
            self.serve_adapter(served, str(result.final_dir))
            spec = f"openai:{served}@{cfg.serve}"
            run.counts.update(served=served)
        run.counts.update(model_id=model_id, final_dir=str(result.final_dir), student=_public(spec),
                          base=base, steps=result.steps,
                          loss=result.metrics.get("loss"))

    def serve_adapter(self, name: str, final_dir: str) -> None:
        """Have the ``--serve`` server serve the adapter in ``final_dir`` as model ``name``."""
        from generation.backends.served_adapters import ensure_adapter

        assert self.config.serve is not None
        if ensure_adapter(self.config.serve, name, final_dir):
            self.log(f"  loaded adapter {name} into {self.config.serve}")

    def merged_weights(self, student: str, t: int) -> str:
        """A full-weights folder of M_t (continual training starts from it)."""
        from generation.backends.hf import parse_spec

        model, adapter = parse_spec(student)
        if adapter is None:
            from generation.backends.aliases import resolve_model

            return resolve_model(model)
        out = self.out / f"r{t}" / "start-merged"
        if not (out / "config.json").exists():
            from selfevo.checkpoints import merge_adapter

            merge_adapter(model, adapter, out)
        return str(out)

    def evaluate(self, run: Run, student: str, t: int, model_id: str | None) -> None:
        """Stage 6: every ``--eval`` benchmark on M_{t+1} (round 0: on M_1)."""
        from selfevo.evaluate import evaluate, load_items

        cfg = self.config
        summaries = []
        for spec in cfg.evals:
            bench, arg = _eval_spec(spec)
            name, items = load_items(bench, path=None if bench == "store" else arg,
                                     where=_store_condition(bench, arg),
                                     limit=cfg.eval_limit, store=self.store)
            summaries += evaluate(self.store, self.backend(student), items, benchmark=name,
                                  modes=cfg.eval_modes, model_id=model_id, round=t,
                                  params=cfg.gen, parent_run_id=self.run_id,
                                  progress=self.refine_progress(f"round {t} eval {name}"))
        run.counts["evals"] = [
            {"benchmark": s.benchmark, "mode": s.mode, "n": s.n, "accuracy": s.accuracy,
             "ci_low": s.ci_low, "ci_high": s.ci_high, "eval_id": s.eval_id, "failed": s.failed}
            for s in summaries]


#: What each stage's line shows: counts key -> words (in this order).
STAGE_LINE = {
    "generate": {"prompts": "prompts", "records": "self records", "new_records": "new",
                 "r_correct": "judged r correct", "refined_correct": "judged r̂ correct",
                 "failed": "failed", "new_prompts": "new prompts",
                 "new_prompts_failed": "new prompts failed"},
    "filter": {"selected": "selected", "kept": "kept", "filter_run": "filter run"},
    "snapshot": {"n": "records", "snapshot": "snapshot"},
    "export": {"n": "records", "dir": "in"},
    "train": {"steps": "steps", "loss": "loss", "model_id": "model", "served": "served as"},
}


def stage_line(stage: str, round: int, counts: dict[str, Any]) -> str:
    """One readable line for a finished stage, e.g. ``round 1 filter: 12 selected, 3 kept, …``.

    The eval stage lists each benchmark and mode with its accuracy and 95% interval.
    """
    from corpus.display import summary_line

    label = f"round {round} {stage}"
    if stage == "eval":
        from selfevo.evaluate import format_accuracy

        by_bench: dict[tuple[str, int], list[str]] = {}
        for e in counts.get("evals", []):
            failed = f" ({e['failed']} not scored: requests failed)" if e.get("failed") else ""
            by_bench.setdefault((e["benchmark"], e["n"]), []).append(
                f"{e['mode']} {format_accuracy(e)}{failed}")
        return f"{label}: " + "; ".join(f"{bench} (n={n}): {', '.join(modes)}"
                                        for (bench, n), modes in by_bench.items())
    shown = STAGE_LINE.get(stage, {})
    return summary_line(label, {words: counts.get(key) for key, words in shown.items()})


def _parse_filter(spec: str) -> Any:
    """A ``--filter`` step, its errors as the user's to fix."""
    from curation.errors import CurationError
    from curation.filters.base import parse_step

    try:
        return parse_step(spec)
    except CurationError as exc:
        raise SelfevoError(f"--filter {spec!r}: {exc}") from None


def _in_snapshot(name: str) -> str:
    return ("record_id IN (SELECT sr.record_id FROM snapshot_records sr JOIN snapshots s "
            f"USING (snapshot_id) WHERE s.name = {sql_literal(name)})")


def _eval_spec(spec: str) -> tuple[str, str | None]:
    """``gsm8k:PATH`` → ("gsm8k", PATH); ``store:SQL`` → ("store", SQL); FILE → (FILE, None)."""
    head, sep, rest = spec.partition(":")
    if sep and head in ("gsm8k", "svamp", "store"):
        return head, rest or None
    return spec, None


def _store_condition(bench: str, arg: str | None) -> Any:
    """The checked condition of a ``store:SQL`` eval spec (None for other benchmarks)."""
    from corpus.sqlfragment import SqlCondition

    return SqlCondition.of(arg, "--eval store:SQL") if bench == "store" else None


def evolve(db: str, config: EvolveConfig, log: Callable[[str], None] = print,
           display: Display | None = None, batch: Any = None) -> list[RoundResult]:
    """Open the store and run (or resume) the evolve described by ``config``.

    Its SQL conditions (``--prompts``, ``--eval store:SQL``) are checked before the store is
    opened. ``batch`` (:class:`generation.batches.BatchOptions`): the generate stage's
    requests go as batches; while they run the stage (and the command) stops ``waiting``,
    and the same command run again resumes there."""
    from corpus.sqlfragment import SqlCondition

    SqlCondition(config.prompts, "--prompts")
    for spec in config.evals:
        _store_condition(*_eval_spec(spec))
    with Store.open(db, command="evolve") as store:
        return Evolution(store, config, log, display, batch).run()
