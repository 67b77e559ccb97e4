"""The SELF pipeline as one sequence of library calls (``selfevo demo``).

generated word problems → responses from the base model → feedback and refinements from the
offline teacher (``verifying`` by default: it re-derives each problem and checks the
response's own steps, so its feedback is a check the student can learn to do) → curation
(gold-match, format, dedup, decontamination) → meta-skill snapshot → LoRA training →
self-evolution rounds as in the paper (self-feedback, self-refinement, self-feedback on the
refinement, keep what that verdict calls correct, train p → r̂ with the meta replay) →
evaluation on held-out problems, direct and with self-refinement → HTML report.

Every step is the same library function a command runs, against one store, so the result is
auditable with ``selfevo sql`` exactly like a hand-run pipeline. Re-running continues where a
previous run stopped: imports are insert-or-ignore, model calls are cached by the ledger,
snapshots and evolve stages are reused.

Each step shows a ``corpus.display`` bar while it runs (when a display is given; the steps
that have parts add a bar per part) and ends with one readable line to ``log``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corpus.display import summary_line
from corpus.sqlfragment import SqlCondition
from corpus.store import Store

if TYPE_CHECKING:
    from corpus.display import Display, Tracker

META_SNAPSHOT = "meta"
#: The generated splits (other prompts in the same store, e.g. GSM8K, are left alone).
TRAIN = "source = 'generated' AND split = 'train'"
POOL = "source = 'generated' AND split = 'pool'"
TEST = "source = 'generated' AND split = 'test'"
#: Meta-skill data: teacher-graded (meta) and gold (qa) records that passed every latest step.
META_WHERE = ("kind IN ('meta', 'qa') AND record_id IN "
              "(SELECT record_id FROM record_latest_passed WHERE passed_all)")


@dataclass
class PipelineConfig:
    """The sizes and models of one pipeline run (defaults: the CPU demo)."""

    out: Path
    model: str = "smollm2-135m"  # base model: alias or folder; "tiny" builds a random tiny one
    n_train: int = 32  # labelled generated problems for the meta-skill corpus
    n_pool: int = 16  # unlabeled generated problems for self-evolution (per round)
    n_test: int = 16  # held-out generated problems for evaluation
    pool_where: str | None = None  # prompts pool condition (default: the generated pool)
    prompts_per_round: int | None = None  # sample of the pool per round (default: n_pool)
    rounds: int = 1
    max_tokens: int = 160  # generation budget per answer / feedback / refinement
    teacher: str = "verifying"  # offline teacher of the meta-skill corpus (or reference)
    meta_steps: int = 8  # LoRA steps on the meta-skill snapshot
    round_steps: int = 8  # LoRA steps per self-evolution round
    train: dict[str, Any] = field(default_factory=lambda: {
        "max_len": 512, "pack_len": 1024, "batch_size": 1, "lr": 3e-4, "lora_r": 8})
    evals: list[str] = field(default_factory=list)  # extra --eval specs (e.g. gsm8k:PATH)
    eval_limit: int | None = None
    # GSM8K test file; default: corpus.presets.benchmark_file (SELFEVO_DATA, ../shared/data),
    # else the held-out generated test problems
    decontam_path: str | None = None
    # Also grade each problem's gold rationale as an answer (verdict correct), so the
    # meta-skill corpus teaches both verdicts even when the base model solves nothing.
    correct_meta: bool = False
    # The self-evolution round's choices (selfevo.evolve.EvolveConfig; defaults: the paper's).
    verdict_on: str = "refined"
    self_layout: str = "answer"
    threads: int = 0  # torch threads; 0: the cores the load average leaves free (free_cores)
    seed: int = 0


@dataclass
class PipelineResult:
    """Where things are and what the run measured."""

    db: Path
    report: Path
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    rounds: list[Any] = field(default_factory=list)


def free_cores() -> int:
    """The cores the 1-minute load average leaves free, at least 1.

    Torch's default (a thread per core) collapses when other jobs share the cores: on this
    2-core machine, with the load average at 6, two processes of one thread generated 3.5 to
    12 times faster than one process of two (docs/experiments.md). An idle machine gets all
    its cores.
    """
    import os

    cores = os.cpu_count() or 1
    return max(1, min(cores, cores - round(os.getloadavg()[0])))


class Pipeline:
    """Runs the steps in order, timing each; ``log`` hears one line per step, ``display``
    (a ``corpus.display`` Display) gets a bar per step."""

    def __init__(self, config: PipelineConfig, log: Callable[[str], None] = print,
                 display: Display | None = None):
        self.c = config
        self.log = log
        self.display = display
        self.out = Path(config.out)
        self.db = str(self.out / "selfevo.duckdb")
        self.result = PipelineResult(Path(self.db), self.out / "report.html")
        self.tracker: Tracker | None = None  # the running step's bar
        self.said: dict[str, Any] = {}  # what the running step reports in its line

    def task(self, label: str) -> Tracker | None:
        """A bar of its own for part of a step (None without a display)."""
        return self.display.task(label) if self.display is not None else None

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one step under its bar; log one line with what it did and its wall time."""
        self.tracker, self.said = self.task(name), {}
        t0 = time.monotonic()
        value = fn()
        self.result.seconds[name] = round(time.monotonic() - t0, 1)
        if self.tracker is not None:
            self.tracker.finish()
        self.log(f"{summary_line(name, self.said)} ({self.result.seconds[name]:.1f}s)")
        return value

    def run(self) -> PipelineResult:
        """Every step of the pipeline; returns the result summary."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.c.model != "tiny":
            import torch

            torch.set_num_threads(self.c.threads or free_cores())
        base = self.step("base model", self.base_model)
        self.step("prompts", self.prompts)
        self.step("collect", lambda: self.collect(base))
        self.step("curate", self.curate)
        export = self.step("meta snapshot", self.meta_snapshot)
        student = self.step("meta training", lambda: self.train_meta(base, export))
        self.result.rounds = self.step("self-evolution", lambda: self.evolve(base, student))
        self.step("report", self.report)
        return self.result

    # -- steps -----------------------------------------------------------------------------
    def base_model(self) -> str:
        """A local folder of the base model (converted / built once, then reused)."""
        if self.c.model == "tiny":
            from trainer.testing.tiny import build_tiny_model

            folder = self.out / "tiny-model"
            if not (folder / "config.json").exists():
                build_tiny_model(folder, seed=self.c.seed)
            self.said["folder"] = str(folder)
            return str(folder)
        from generation.backends.aliases import resolve_model

        self.said["folder"] = resolve_model(self.c.model)
        return self.said["folder"]

    def prompts(self) -> None:
        """Generated problems: train (labelled), pool (used unlabeled), test (held out)."""
        from corpus.importers import import_generated

        c = self.c
        with Store.open(self.db, command="demo") as store:
            for n, seed, split in ((c.n_train, c.seed, "train"), (c.n_pool, c.seed + 1, "pool"),
                                   (c.n_test, c.seed + 2, "test")):
                if n > 0:  # n_pool = 0 when the pool comes from elsewhere (GSM8K train)
                    import_generated(store, n, seed=seed, split=split)
            self.result.counts["prompts"] = store.query("SELECT count(*) FROM prompts")[0][0]
        self.said["prompts in the store"] = self.result.counts["prompts"]

    def collect(self, base: str) -> None:
        """r from the base model, f + verdict + r̂ from the offline teacher (kind meta)."""
        from generation.collect import CollectConfig, run_collect

        summary = run_collect(self.db, CollectConfig(
            teacher=self.c.teacher, responder=f"hf:{base}", where=TRAIN,
            max_tokens=self.c.max_tokens))
        self.said.update({"meta records": summary.records, "new": summary.records_new})
        self.add_qa_records()

    def add_qa_records(self) -> None:
        """Plain QA data (prompt → gold rationale) mixed into the meta-skill corpus; with
        ``correct_meta`` also those rationales graded as answers (meta, verdict correct)."""
        from corpus.records import insert_records, make_record
        from generation.teachers.reference import clean_rationale

        with Store.open(self.db, command="demo") as store:
            prompts = store.query_dicts("SELECT prompt_id, gold_answer, gold_rationale FROM "
                                        f"prompts WHERE {SqlCondition(TRAIN)} ORDER BY prompt_id")
            rows = [make_record(prompt_id=p["prompt_id"], kind="qa", responder="gold",
                                response=clean_rationale(p["gold_rationale"], p["gold_answer"]),
                                source="generated") for p in prompts]
            with store.run("demo qa records", {"from": "gold_rationale"}) as run:
                run.add("records", store.transact(
                    lambda con: insert_records(con, rows, run.run_id)))
        self.said["qa records"] = len(rows)
        if self.c.correct_meta:
            # A base model that solves nothing gives a corpus whose verdicts all say
            # "incorrect", and a student trained on it learns a constant verdict the verdict
            # filter never passes. Grading the qa records' responses (the gold rationales)
            # with the teacher adds the "correct" side: meta records, responder gold.
            from generation.collect import CollectConfig, run_collect

            graded = run_collect(self.db, CollectConfig(teacher=self.c.teacher, where=TRAIN,
                                                        responses_from=("qa",)))
            self.said["gold answers graded"] = graded.records

    def curate(self) -> None:
        """gold-match + format on meta records, near dedup of prompts, decontamination."""
        from corpus.snapshots import sql_literal
        from curation.curate import run_filters
        from curation.dedup.pipeline import DedupConfig, dedup_records
        from curation.filters.base import parse_step
        from curation.selection import Selection

        with Store.open(self.db, command="demo") as store:
            fr = run_filters(store, [parse_step("gold-match"), parse_step("format")],
                             Selection(kind="meta"), progress=self.task("filter meta"))
            self.result.counts["meta judged"] = fr.selected
            self.result.counts["meta kept by filters"] = fr.kept
            self.said.update({"meta judged": fr.selected, "kept by filters": fr.kept})
            # Per kind and responder: records of one prompt from different responders (the
            # base model's meta record, the gold one, the qa record) are not duplicates.
            groups = store.query("SELECT DISTINCT kind, responder FROM records "
                                 "WHERE kind IN ('meta', 'qa') ORDER BY ALL")
            kept = judged = 0
            for kind, responder in groups:
                who = ("responder IS NULL" if responder is None else
                       f"responder = {sql_literal(responder)}")
                dr = dedup_records(store, DedupConfig(methods=("exact", "near")),
                                   Selection(kind=kind, where=who),
                                   progress=self.task(f"dedup {kind}"))
                self.result.counts[f"dedup run ({kind}, {responder})"] = dr.run_id
                kept, judged = kept + dr.kept, judged + dr.selected
            self.said["kept by dedup"] = f"{kept} of {judged}"
            self.decontaminate(store)

    def decontam_benchmark(self, store: Store) -> tuple[str, list[tuple[str, str]], dict[str, Any]]:
        """``(name, items, source)`` of what the corpus is decontaminated against: GSM8K test
        when its file is found (``decontam_path``, else :func:`corpus.presets.benchmark_file`),
        else the held-out generated test problems (the demo's own evaluation set), so a
        fresh machine still shows the step. ``source["described"]`` says which, in words."""
        from corpus.presets import benchmark_file, data_lookup_hint
        from curation.decontam import load_benchmark

        path = benchmark_file("gsm8k", self.c.decontam_path)
        if path is not None:
            name, items, sha = load_benchmark("gsm8k-test", str(path))
            return name, items, {"path": str(path), "sha256": sha,
                                 "described": f"GSM8K test ({path})"}
        items = store.query(f"SELECT prompt_id, text FROM prompts WHERE {SqlCondition(TEST)} "
                            "ORDER BY prompt_id")
        return "generated-test", [(i, t) for i, t in items], {
            "prompts": TEST, "described": "the held-out generated test problems (no GSM8K "
                                          f"test file: {data_lookup_hint()})"}

    def decontaminate(self, store: Store) -> None:
        """Decontaminate the meta-skill corpus against :meth:`decontam_benchmark`."""
        from curation.decontam import DEFAULT_NGRAM, BenchmarkIndex, decontaminate
        from curation.selection import Selection

        name, items, source = self.decontam_benchmark(store)
        if not items:
            self.log(f"  decontamination skipped: nothing to check against "
                     f"({source['described']})")
            return
        index = BenchmarkIndex.build(name, items, DEFAULT_NGRAM)
        dc = decontaminate(store, index, Selection(where="kind IN ('meta', 'qa')"),
                           source={k: v for k, v in source.items() if k != "described"},
                           progress=self.task("decontam"))
        self.result.counts["decontam run"] = dc.run_id
        self.result.counts["decontam against"] = name
        self.log(f"  decontamination against {source['described']}: {dc.flagged} of "
                 f"{dc.selected} records flagged")

    def meta_snapshot(self) -> str:
        """Snapshot + Parquet export of the curated meta-skill corpus."""
        from corpus.export import export_snapshot
        from corpus.snapshots import create_snapshot, find_snapshot

        with Store.open(self.db, command="demo") as store:
            with store.connection() as con:
                snap = find_snapshot(con, META_SNAPSHOT)
            if snap is None:
                snap = create_snapshot(store, META_SNAPSHOT, META_WHERE,
                                       note="curated meta-skill corpus (demo)")
            self.result.counts["meta snapshot"] = snap.n
            self.said.update({"snapshot": META_SNAPSHOT, "records": snap.n})
            out = self.out / "exports" / META_SNAPSHOT
            out.parent.mkdir(parents=True, exist_ok=True)
            export_snapshot(store, META_SNAPSHOT, "parquet", out)
        return str(out)

    def train_meta(self, base: str, export: str) -> str:
        """LoRA on the meta-skill export, registered in ``models``; returns the student spec."""
        from selfevo.checkpoints import register_checkpoint, training_progress
        from trainer.config import TrainConfig
        from trainer.train import train

        out = self.out / "models" / "meta"
        if (out / "final" / "adapter_config.json").exists():
            self.said["already trained"] = str(out / "final")
            return f"hf:{base}+{out / 'final'}"
        cfg = TrainConfig.from_dict({**self.c.train, "data": export, "base": base,
                                     "out": str(out), "max_steps": self.c.meta_steps,
                                     "seed": self.c.seed, "progress": False,
                                     "resume": (out / "checkpoints").exists()})
        result = train(cfg, log=lambda m: None, on_step=training_progress(self.tracker)
                       if self.tracker is not None else None)
        with Store.open(self.db, command="demo") as store, \
                store.run("train", cfg.resolved()) as run:
            register_checkpoint(store, run, result, cfg)
        self.result.counts["meta training loss"] = result.metrics.get("loss")
        self.said.update({"steps": result.steps, "loss": result.metrics.get("loss"),
                          "adapter": str(result.final_dir)})
        return f"hf:{base}+{result.final_dir}"

    def evolve(self, base: str, student: str) -> list[Any]:
        """Self-evolution rounds from the meta-skill student, with the evals."""
        from selfevo.evolve import Evolution, EvolveConfig

        c = self.c
        config = EvolveConfig(
            student=student, base=base, prompts=c.pool_where or POOL,
            rounds=c.rounds, meta=META_SNAPSHOT, strategy="restart", filters=["verdict"],
            verdict_on=c.verdict_on, self_layout=c.self_layout,
            prompts_per_round=c.prompts_per_round or c.n_pool,
            evals=[f"store:{TEST}", *c.evals], eval_limit=c.eval_limit or c.n_test,
            gen={"temperature": 0.0, "max_tokens": c.max_tokens},
            train={**c.train, "max_steps": c.round_steps}, out=str(self.out / "evolve"),
            name="demo", seed=c.seed)
        with Store.open(self.db, command="demo evolve") as store:
            rounds = Evolution(store, config, log=self.log, display=self.display).run()
        self.said.update({"rounds": c.rounds, "self records": sum(r.records for r in rounds),
                          "kept": sum(r.kept for r in rounds)})
        return rounds

    def report(self) -> None:
        """The HTML audit report of the whole store."""
        from selfevo.report import write_report

        write_report(self.db, self.result.report)
        self.said["written to"] = str(self.result.report)


def run_pipeline(config: PipelineConfig, log: Callable[[str], None] = print,
                 display: Display | None = None) -> PipelineResult:
    """Run the whole SELF pipeline described by ``config`` (bars on ``display`` if given)."""
    return Pipeline(config, log, display).run()
