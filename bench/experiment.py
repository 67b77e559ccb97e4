"""SELF at 135M, built to see an effect: paired arms on a task the student can learn.

The arms (docs/experiments.md states them, the gate and why), all on the same held-out items:

    A0   the base model (SmolLM2-135M-Instruct)
    A1   A0 + LoRA on QA data (p -> gold rationale) of the task family       (seed s)
    A1b  the same with seed s+1: the noise floor of a retraining
    A2   A1 + LoRA on the meta-skill corpus (A1's own sampled answers, the verifying teacher's
         feedback and refinements) with QA replay
    A3   A2 + one SELF round (evolve's defaults: feedback on r, refinement, feedback on r̂;
         keep what the student calls correct on r̂; train p -> r̂ with the meta replay)
    A3o  the same round with an oracle filter (r̂ matches the gold answer)

Direct accuracy for all; self-refinement and self-consistency for A2 and A3; the critic's
sensitivity and specificity; refinement transitions; exact McNemar between neighbours,
Holm-adjusted. Every step is a ``runs`` row ``experiment <step>`` in OUT/selfevo.duckdb, and
a re-run resumes at the first unfinished step; ``table`` prints the docs tables from the
store alone.

    make experiment                                         # the arms (docs/experiments.md)
    python bench/experiment.py pilot --out bench/out/pilot  # the pilot that chose the family
    python bench/experiment.py table --out bench/out/experiment
    python bench/experiment.py run --quick --out /tmp/exp   # tiny random model, a minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

#: The task family the pilot chose (docs/experiments.md, "Pilot").
FAMILY = "generated"
TEST, QA, META, POOL = "test", "qa", "meta", "pool"
#: The gate, fixed before the arms run (docs/experiments.md): A1's direct accuracy on the
#: held-out items must lie in this range, else the arms after A1 are not run.
GATE = (0.15, 0.60)


# -- task families (the pilot's candidates) ---------------------------------------------------
def _generated(n: int, seed: int, keep: Any) -> list[dict[str, Any]]:
    from corpus.wordproblems import generate_problems

    out, size = [], max(64, 8 * n)
    while len(out) < n:
        out = [p for p in generate_problems(size, seed) if keep(p)][:n]
        size *= 2
    return [{**p, "source": "generated"} for p in out]


def _easy(p: dict[str, Any]) -> bool:
    """The generator's two-step templates with small numbers."""
    t, k = p["meta"]["template"], p["meta"]["params"]
    if t == "sharing":
        return k["friends"] <= 5 and k["had"] + k["got"] <= 40
    if t == "shopping":
        return k["qty"] <= 5 and float(k["price"]).is_integer() and float(k["price"]) <= 10
    return False


def _svamp_one_operation(n: int, seed: int) -> list[dict[str, Any]]:
    """SVAMP items whose Equation has one operation; the rationale is that equation."""
    import random

    from corpus.presets import require_data_file, svamp_prompt

    rows = json.loads(require_data_file("svamp", "SVAMP.json").read_text())
    out = []
    for row in rows:
        ops = re.findall(r"[-+*/]", row["Equation"])
        if len(ops) != 1:
            continue
        fields = svamp_prompt(row)
        a, b = (float(x) for x in re.findall(r"\d+(?:\.\d+)?", row["Equation"])[:2])
        fmt = lambda x: str(int(x)) if float(x).is_integer() else str(x)  # noqa: E731
        fields["gold_rationale"] = (f"{fmt(a)} {ops[0]} {fmt(b)} = {fields['gold_answer']}.\n"
                                    f"#### {fields['gold_answer']}")
        out.append({**fields, "source": "svamp"})
    random.Random(seed).shuffle(out)
    if len(out) < n:
        raise SystemExit(f"svamp-1op has {len(out)} items, {n} asked")
    return out[:n]


FAMILIES = {
    "generated-easy": lambda n, seed: _generated(n, seed, _easy),
    "svamp-1op": _svamp_one_operation,
    "generated": lambda n, seed: _generated(n, seed, lambda p: True),
}


# -- settings and the lab -------------------------------------------------------------------
@dataclass
class Settings:
    """Sizes, models and budgets of one experiment (defaults: ``make experiment``)."""

    out: Path
    family: str = FAMILY
    model: str = "smollm2-135m"  # or "tiny" (a random tiny model, for the test)
    n_test: int = 300
    n_qa: int = 1200
    n_meta: int = 300
    n_pool: int = 300
    max_tokens: int = 128
    lr: float = 1e-3
    qa_epochs: float = 1.0  # A1 (and A1b)
    meta_epochs: float = 1.0  # A2: the meta corpus plus as much QA replay
    round_steps: int = 60  # A3 and A3o: the same number of steps
    sc: int = 3  # self-consistency samples for A2 and A3
    workers: int = 2  # processes that generate (and train A1, A1b side by side)
    threads: int = 1  # torch threads per process (1 measured fastest on shared cores)
    seed: int = 0
    gate: tuple[float, float] = GATE
    # gradient checkpointing: a 1024-token packed row then needs ~2.6 GB, not ~4.5 (7.3 GB at
    # 2048 tokens without it), so two trainings side by side fit beside other jobs; a
    # checkpoint every 20 steps, so a killed run resumes its training there
    train: dict[str, Any] = field(default_factory=lambda: {
        "max_len": 512, "pack_len": 1024, "batch_size": 1, "lora_r": 16, "warmup_ratio": 0.05,
        "gradient_checkpointing": True, "save_every": 20})

    def gen(self, **extra: Any) -> dict[str, Any]:
        """Generation parameters (greedy unless ``extra`` says otherwise)."""
        return {"temperature": 0.0, "max_tokens": self.max_tokens, **extra}


def _train_in_child(config: dict[str, Any], threads: int) -> Any:
    """Train in a fresh process (its memory goes back when it ends)."""
    import torch

    torch.set_num_threads(threads)
    from trainer.config import TrainConfig
    from trainer.train import train

    return train(TrainConfig.from_dict(config), log=lambda m: None)


class Lab:
    """The experiment over one store: steps that run once, arms, evaluations, tables."""

    def __init__(self, s: Settings, log: Any = print):
        self.s = s
        self.log = log
        self.out = Path(s.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.db = str(self.out / "selfevo.duckdb")

    # -- bookkeeping ---------------------------------------------------------------------
    def store(self) -> Any:
        from corpus.store import Store

        return Store.open(self.db, command="experiment")

    def done(self, step: str) -> dict[str, Any] | None:
        """Counts of the finished step, or None."""
        from corpus.store import Store

        if not Path(self.db).exists():
            return None
        with Store.open_readonly(self.db) as store:
            rows = store.query("SELECT counts FROM runs WHERE command = ? AND status = 'ok' "
                               "ORDER BY started_at DESC LIMIT 1", [f"experiment {step}"])
        return json.loads(rows[0][0] or "{}") if rows else None

    def step(self, step: str, fn: Any, **config: Any) -> dict[str, Any]:
        """Run ``fn(counts)`` as step ``step`` unless it finished; returns its counts."""
        found = self.done(step)
        if found is not None:
            self.log(f"{step}: already done")
            return found
        t0, cpu0 = time.monotonic(), _cpu_seconds()
        counts: dict[str, Any] = {}
        fn(counts)
        counts["seconds"] = round(time.monotonic() - t0, 1)
        # CPU seconds of this process and the workers it waited for: on an idle machine the
        # step takes about this divided by the processes that ran side by side
        counts["cpu_seconds"] = round(_cpu_seconds() - cpu0, 1)
        counts["load"] = round(os.getloadavg()[0], 1)  # the machine's, at the step's end
        with self.store() as store, store.run(f"experiment {step}", {
                "step": step, **config, "settings": _jsonable(asdict(self.s))}) as run:
            run.counts.update(counts)
        self.log(f"{step}: {_line(counts)}")
        return counts

    # -- data ----------------------------------------------------------------------------
    def prompts(self, counts: dict[str, Any]) -> None:
        """The family's items as prompts: test, qa, meta, pool (disjoint texts)."""
        from corpus.records import insert_prompts, make_prompt

        s = self.s
        sizes = [(TEST, s.n_test), (QA, s.n_qa), (META, s.n_meta), (POOL, s.n_pool)]
        items = FAMILIES[s.family](sum(n for _, n in sizes), s.seed)
        rows, at = [], 0
        for split, n in sizes:
            for p in items[at:at + n]:
                rows.append(make_prompt(p["text"], gold_answer=p["gold_answer"],
                                        gold_rationale=p["gold_rationale"],
                                        source=f"exp:{s.family}", split=split, meta=p["meta"]))
            at += n
        with self.store() as store, store.run("experiment prompts import", {
                "family": s.family, "seed": s.seed}) as run, store.transaction() as con:
            counts["prompts"] = insert_prompts(con, rows, run.run_id)

    def where(self, split: str) -> str:
        """The prompts of one split of this experiment's family."""
        return f"source = 'exp:{self.s.family}' AND split = '{split}'"

    def qa_records(self, counts: dict[str, Any]) -> None:
        """Kind qa: p -> the gold rationale (``The answer is N.`` last), for qa and meta."""
        from corpus.records import insert_records, make_record
        from corpus.snapshots import create_snapshot
        from generation.teachers.reference import clean_rationale

        with self.store() as store:
            prompts = store.query_dicts(
                "SELECT prompt_id, split, gold_answer, gold_rationale FROM prompts WHERE "
                f"({self.where(QA)}) ORDER BY prompt_id")
            rows = [make_record(prompt_id=p["prompt_id"], kind="qa", responder="gold",
                                response=clean_rationale(p["gold_rationale"], p["gold_answer"]),
                                source=f"exp:{self.s.family}") for p in prompts]
            with store.run("experiment qa import", {}) as run, store.transaction() as con:
                counts["qa_records"] = insert_records(con, rows, run.run_id)
            qa = f"kind = 'qa' AND prompt_id IN (SELECT prompt_id FROM prompts WHERE {self.where(QA)})"
            counts["qa"] = create_snapshot(store, "qa", qa, note="A1: QA data").n

    # -- training ------------------------------------------------------------------------
    def export(self, snapshot: str) -> str:
        from corpus.export import export_snapshot

        out = self.out / "exports" / snapshot
        if not (out / "manifest.json").exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            with self.store() as store:
                export_snapshot(store, snapshot, "parquet", out)
        return str(out)

    def train_config(self, data: str, base: str, arm: str, seed: int, **extra: Any
                     ) -> dict[str, Any]:
        return {**self.s.train, "lr": self.s.lr, "data": data, "base": base,
                "out": str(self.out / "models" / arm), "seed": seed, "progress": False,
                **extra}

    def train(self, configs: dict[str, dict[str, Any]], counts: dict[str, Any]) -> None:
        """Train the arms in ``configs`` (side by side, ``workers`` at a time), register."""
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        from selfevo.checkpoints import register_checkpoint
        from trainer.config import TrainConfig

        for cfg in configs.values():
            cfg["resume"] = (Path(cfg["out"]) / "checkpoints").exists()
        with ProcessPoolExecutor(min(self.s.workers, len(configs)),
                                 mp_context=get_context("spawn")) as pool:
            futures = {arm: pool.submit(_train_in_child, cfg, self.s.threads)
                       for arm, cfg in configs.items()}
            results = {arm: f.result() for arm, f in futures.items()}
        with self.store() as store:
            for arm, result in results.items():
                tc = TrainConfig.from_dict(configs[arm])
                with store.run("train", tc.resolved()) as run:
                    model_id = register_checkpoint(store, run, result, tc)
                counts[arm] = {"model_id": model_id, "adapter": str(result.final_dir),
                               "base": tc.base, "steps": result.steps,
                               "loss": result.metrics.get("loss")}

    def base(self) -> str:
        """The base model folder (a tiny random one with ``model='tiny'``)."""
        if self.s.model == "tiny":
            from trainer.testing.tiny import build_tiny_model

            folder = self.out / "tiny-model"
            if not (folder / "config.json").exists():
                build_tiny_model(folder, seed=self.s.seed)
            return str(folder)
        from generation.backends.aliases import resolve_model

        return resolve_model(self.s.model)

    def merged(self, arm: str, base: str, adapter: str) -> str:
        """Full weights of an arm (the next arm trains LoRA on top of them)."""
        from selfevo.checkpoints import merge_adapter

        out = self.out / "models" / f"{arm}-merged"
        if not (out / "config.json").exists():
            merge_adapter(base, adapter, out)
        return str(out)

    # -- evaluation ----------------------------------------------------------------------
    def backend(self, spec: str) -> Any:
        from pool import PoolBackend

        return PoolBackend(spec, workers=self.s.workers, threads=self.s.threads)

    def evaluate(self, arm: str, spec: str, modes: tuple[str, ...], sc: int,
                 counts: dict[str, Any]) -> None:
        """The held-out items: ``modes`` greedy, plus ``sc`` sampled answers (majority)."""
        from selfevo.evaluate import evaluate, load_items

        backend = self.backend(spec)
        try:
            with self.store() as store:
                name, items = load_items("store", where=self.where(TEST), store=store)
                evals = evaluate(store, backend, items, benchmark=name, modes=modes,
                                 params=self.s.gen())
                if sc > 1:
                    evals += evaluate(store, backend, items, benchmark=name, modes=("direct",),
                                      self_consistency=sc, params=self.s.gen(temperature=0.7))
        finally:
            backend.close()
        counts["arm"] = arm
        counts["evals"] = {("sc" if i >= len(modes) else e.mode): e.eval_id
                           for i, e in enumerate(evals)}
        counts["accuracy"] = {("sc" if i >= len(modes) else e.mode): round(e.accuracy, 4)
                              for i, e in enumerate(evals)}

    # -- the arms --------------------------------------------------------------------------
    def run(self) -> None:
        """Every step in order; stops after A1 when the gate fails."""
        s, base = self.s, self.base()
        self.step("prompts", self.prompts, family=s.family)
        self.step("qa records", self.qa_records)
        qa = self.export("qa")
        a1 = self.step("train a1 a1b", lambda c: self.train({
            "a1": self.train_config(qa, base, "a1", s.seed, epochs=s.qa_epochs),
            "a1b": self.train_config(qa, base, "a1b", s.seed + 1, epochs=s.qa_epochs)}, c))
        spec = {"a0": f"hf:{base}", "a1": f"hf:{base}+{a1['a1']['adapter']}",
                "a1b": f"hf:{base}+{a1['a1b']['adapter']}"}
        for arm in ("a0", "a1", "a1b"):
            self.step(f"eval {arm}", lambda c, a=arm: self.evaluate(a, spec[a], ("direct",), 1, c),
                      arm=arm)
        acc = self.done("eval a1")["accuracy"]["direct"]
        low, high = s.gate
        gate = low <= acc <= high
        self.step("gate", lambda c: c.update(a1_direct=acc, range=[low, high], passed=gate))
        if not gate:
            self.log(f"gate failed: A1 answers {acc:.1%} of the held-out items, outside "
                     f"{low:.0%}-{high:.0%}; the arms after A1 are not run")
            return
        self.step("meta corpus", lambda c: self.meta_corpus(spec["a1"], c))
        meta = self.export("meta-replay")
        a1_full = self.merged("a1", base, a1["a1"]["adapter"])
        a2 = self.step("train a2", lambda c: self.train({"a2": self.train_config(
            meta, a1_full, "a2", s.seed, epochs=s.meta_epochs)}, c))
        spec["a2"] = f"hf:{a1_full}+{a2['a2']['adapter']}"
        self.step("eval a2", lambda c: self.evaluate("a2", spec["a2"], ("direct", "refine"),
                                                     s.sc, c), arm="a2")
        for arm, filters in (("a3", ["verdict"]), ("a3o", ["gold-match"])):
            r = self.step(f"round {arm}", lambda c, a=arm, f=filters: self.round(
                a, spec["a2"], f, c), arm=arm)
            spec[arm] = r["student"]
        self.step("eval a3", lambda c: self.evaluate("a3", spec["a3"], ("direct", "refine"),
                                                     s.sc, c), arm="a3")
        self.step("eval a3o", lambda c: self.evaluate("a3o", spec["a3o"], ("direct",), 1, c),
                  arm="a3o")

    def meta_corpus(self, a1: str, counts: dict[str, Any]) -> None:
        """A1's sampled answers to the meta split, graded by the verifying teacher; the
        ``meta-replay`` snapshot = those records + as many QA records (replay)."""
        from corpus.snapshots import create_snapshot
        from generation.collect import CollectConfig, run_collect

        summary = run_collect(self.db, CollectConfig(
            teacher="verifying", responder=a1, where=self.where(META), temperature=0.7,
            max_tokens=self.s.max_tokens))
        counts.update(records=summary.records, verdicts=summary.verdicts)
        with self.store() as store:
            replay = (f"record_id IN (SELECT record_id FROM records WHERE kind = 'qa' AND "
                      f"prompt_id IN (SELECT prompt_id FROM prompts WHERE {self.where(QA)}) "
                      f"ORDER BY md5(record_id) LIMIT {self.s.n_meta})")
            meta = (f"kind = 'meta' AND prompt_id IN (SELECT prompt_id FROM prompts WHERE "
                    f"{self.where(META)})")
            counts["snapshot"] = create_snapshot(store, "meta-replay", f"({meta}) OR {replay}",
                                                 note="A2: meta corpus + QA replay").n

    def round(self, arm: str, a2: str, filters: list[str], counts: dict[str, Any]) -> None:
        """One SELF round from A2 (evolve's defaults; ``filters`` the only difference)."""
        from corpus.store import Store
        from selfevo.evolve import Evolution, EvolveConfig

        lab = self

        class Pooled(Evolution):
            def backend(self, spec: str) -> Any:  # generation in worker processes
                if spec not in self._backends:
                    self.close()
                    self._backends[spec] = lab.backend(spec)
                return self._backends[spec]

        config = EvolveConfig(
            student=a2, base=self.base(), prompts=self.where(POOL), rounds=1,
            meta="meta-replay", strategy="continual", filters=filters, gen=self.s.gen(),
            train={**self.s.train, "lr": self.s.lr, "max_steps": self.s.round_steps},
            out=str(self.out / "evolve"), name=arm, seed=self.s.seed)
        with Store.open(self.db, command="experiment") as store:
            [_, r1] = Pooled(store, config, log=self.log).run()
        counts.update(student=r1.student, model_id=r1.model_id, records=r1.records,
                      kept=r1.kept, snapshot=r1.snapshot, snapshot_n=r1.snapshot_n)


# -- the tables (from the store alone) -----------------------------------------------------
ARMS = ("a0", "a1", "a1b", "a2", "a3", "a3o")
NEIGHBOURS = (("a0", "a1"), ("a1", "a1b"), ("a1", "a2"), ("a2", "a3"), ("a3", "a3o"))


def arm_evals(store: Any) -> dict[str, dict[str, str]]:
    """eval ids per arm and mode, as the experiment's eval steps recorded them."""
    rows = store.query("SELECT counts FROM runs WHERE command LIKE 'experiment eval %' AND "
                       "status = 'ok' ORDER BY started_at")
    out = {}
    for (counts,) in rows:
        c = json.loads(counts)
        out[c["arm"]] = c["evals"]
    return out


def tables(db: str) -> str:
    """The markdown tables of docs/experiments.md, computed from the store."""
    from corpus.store import Store
    from selfevo.comparison import EvalRef, compare_pair, compare_pairs

    lines = []
    with Store.open_readonly(db) as store:
        evals = arm_evals(store)

        def ref(eval_id: str) -> EvalRef:
            row = store.query("SELECT eval_id, model, benchmark, mode, run_id, n FROM evals "
                              "WHERE eval_id = ?", [eval_id])[0]
            return EvalRef(*row)

        acc = {e: r for e, r in store.query("SELECT eval_id, [correct, n] FROM evals")}
        lines += ["| arm | n | direct | self-refine | self-consistency |",
                  "|---|---:|---|---|---|"]
        for arm in ARMS:
            if arm in evals:
                cells = [_acc_cell(*acc[evals[arm][m]]) if m in evals[arm] else "-"
                         for m in ("direct", "refine", "sc")]
                lines.append(f"| {arm} | {acc[evals[arm]['direct']][1]} | " + " | ".join(cells)
                             + " |")
        pairs = [(a, b) for a, b in NEIGHBOURS if a in evals and b in evals]
        results = compare_pairs(store, [(ref(evals[a]["direct"]), ref(evals[b]["direct"]))
                                        for a, b in pairs])
        lines += ["", "| direct: A → B | only A right | only B right | exact McNemar p | "
                      "Holm p |", "|---|---:|---:|---:|---:|"]
        for (a, b), r in zip(pairs, results, strict=True):
            t = r["table"]
            lines.append(f"| {a} → {b} | {t['a_only']} | {t['b_only']} | "
                         f"{r['mcnemar_p']:.3g} | {r['holm_p']:.3g} |")
        floor = dict(zip(pairs, results, strict=True)).get(("a1", "a1b"))
        if floor:  # the noise floor: how often two seeds of one recipe disagree
            t, n = floor["table"], acc[evals["a1"]["direct"]][1]
            share = (t["a_only"] + t["b_only"]) / n
            lines += ["", f"Minimum detectable effect (McNemar, normal approximation, "
                          f"alpha 0.05, power 0.8) at n = {n} with A1/A1b's discordance "
                          f"{share:.1%}: {100 * minimum_detectable_effect(n, share):.1f} "
                          f"points of direct accuracy."]
        lines += ["", "| arm | refine: wrong→right | right→wrong | McNemar p | critic "
                      "sensitivity | critic specificity |", "|---|---:|---:|---:|---|---|"]
        for arm in ("a2", "a3"):
            if arm in evals and "refine" in evals[arm]:
                r = compare_pair(store, ref(evals[arm]["direct"]), ref(evals[arm]["refine"]))
                tr, c = r["transitions"], r["critic"]["b"] or {}
                lines.append(f"| {arm} | {tr['wrong_to_right']} | {tr['right_to_wrong']} | "
                             f"{r['mcnemar_p']:.3g} | {_rate(c, 'sensitivity')} | "
                             f"{_rate(c, 'specificity')} |")
        lines += ["", round_table(store)]
    return "\n".join(lines)


def round_table(store: Any) -> str:
    """Per round (A3, A3o): the self records, both verdicts against gold, what was kept."""
    from curation.answers import answers_match, extract_answer

    rounds = store.query(
        "SELECT json_extract_string(config, '$.evolve'), json_extract_string(counts, "
        "'$.filter_run') FROM runs WHERE command = 'evolve filter' AND status = 'ok' "
        "ORDER BY started_at")
    rows = [{**r, "arm": arm} for arm, filter_run in rounds for r in store.query_dicts(
        "SELECT r.response, r.refinement, r.verdict, r.refined_verdict, p.gold_answer, "
        "d.passed_all AS passed FROM record_passed d JOIN records r USING (record_id) "
        "JOIN prompts p USING (prompt_id) WHERE d.run_id = ?", [filter_run])]
    out = ["| round | self records | r right | r̂ right | verdict on r: sens / spec | "
           "verdict on r̂: sens / spec | kept | kept with r̂ right |",
           "|---|---:|---:|---:|---|---|---:|---:|"]
    from selfevo.stats import critic_quality

    def right(text: str | None, gold: str) -> bool:
        pred = extract_answer(text or "")
        return pred is not None and answers_match(pred, gold)

    for arm in dict.fromkeys(r["arm"] for r in rows):
        rs = [r for r in rows if r["arm"] == arm]
        r_ok = [right(r["response"], r["gold_answer"]) for r in rs]
        rr_ok = [right(r["refinement"], r["gold_answer"]) for r in rs]
        on_r = critic_quality([r["verdict"] for r in rs], r_ok).as_dict()
        on_rr = critic_quality([r["refined_verdict"] for r in rs], rr_ok).as_dict()
        kept = [ok for r, ok in zip(rs, rr_ok, strict=True) if r["passed"]]
        out.append(f"| {arm} | {len(rs)} | {sum(r_ok)} | {sum(rr_ok)} | "
                   f"{_rate(on_r, 'sensitivity')} / {_rate(on_r, 'specificity')} | "
                   f"{_rate(on_rr, 'sensitivity')} / {_rate(on_rr, 'specificity')} | "
                   f"{len(kept)} | {sum(kept)} |")
    return "\n".join(out)


def minimum_detectable_effect(n: int, discordant: float, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """Smallest accuracy difference a paired McNemar test detects with ``power`` at level
    ``alpha`` (normal approximation; ``discordant`` = share of items the two arms disagree
    on, e.g. measured between A1 and A1b)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * math.sqrt(discordant / n)


def _acc_cell(k: int, n: int) -> str:
    from selfevo.stats import wilson_interval

    lo, hi = wilson_interval(k, n)
    return f"{k} ({100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}])"


def _rate(c: dict[str, Any], key: str) -> str:
    value = c.get(key)
    if value is None:
        return "-"
    lo, hi = c[f"{key}_ci"]
    return f"{100 * value:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children."""
    import resource

    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                 resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def _line(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if not isinstance(v, dict)) or "done"


# -- the pilot ------------------------------------------------------------------------------
def pilot(out: Path, families: list[str], n_eval: int, n_qa: int, settings: dict[str, Any],
          log: Any = print) -> None:
    """Per candidate family: the base model and a QA fine-tune on ``n_qa`` items, each on
    ``n_eval`` held-out items, direct. One store per family under ``out``."""
    for family in families:
        pilot_family(Settings(out=out / family, family=family, n_test=n_eval, n_qa=n_qa,
                              n_meta=0, n_pool=0, **settings), log)
    for family in families:
        with_db = out / family / "selfevo.duckdb"
        log(f"\n{family}:\n" + tables(str(with_db)))


def pilot_family(s: Settings, log: Any) -> None:
    """The base model and the QA fine-tune of one candidate family, each evaluated."""
    lab = Lab(s, log=lambda m: log(f"[{s.family}] {m}"))
    base = lab.base()
    lab.step("prompts", lab.prompts, family=s.family)
    lab.step("qa records", lab.qa_records)
    a1 = lab.step("train a1", lambda c: lab.train({"a1": lab.train_config(
        lab.export("qa"), base, "a1", s.seed, epochs=s.qa_epochs)}, c))
    for arm, spec in (("a0", f"hf:{base}"), ("a1", f"hf:{base}+{a1['a1']['adapter']}")):
        lab.step(f"eval {arm}", lambda c, a=arm, sp=spec: lab.evaluate(a, sp, ("direct",), 1, c),
                 arm=arm)


def threads(n: int, max_tokens: int, log: Any = print) -> None:
    """Generation wall time of the same answers: 1 process x 2 threads, 2 x 1, 1 x 1."""
    from pool import PoolBackend

    from corpus.wordproblems import generate_problems
    from generation.backends.base import ChatRequest

    requests = [ChatRequest([{"role": "user", "content": p["text"]}],
                            {"max_tokens": max_tokens}) for p in generate_problems(n, seed=7)]
    for workers, th in ((1, 2), (2, 1), (1, 2), (2, 1), (1, 1)):
        b = PoolBackend("hf:smollm2-135m", workers=workers, threads=th)
        b.generate(requests[:workers])  # load the models before the clock starts
        t0 = time.perf_counter()
        res = b.generate(requests)
        dt = time.perf_counter() - t0
        b.close()
        tokens = sum(r.completion_tokens or 0 for r in res)
        log(f"{workers} process(es) x {th} thread(s): {dt:.1f}s for {n} answers, "
            f"{tokens / dt:.1f} tokens/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "pilot", "table", "threads"):
        p = sub.add_parser(name)
        p.add_argument("--out", default=f"bench/out/{'pilot' if name == 'pilot' else 'experiment'}")
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--quick", action="store_true", help="tiny random model, tiny sizes")
        p.add_argument("--families", default=",".join(FAMILIES),
                       help="pilot: candidate families (comma-separated)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.cmd == "table":
        print(tables(str(out / "selfevo.duckdb")))
        return
    if args.cmd == "threads":
        threads(16, 48)
        return
    import torch

    torch.set_num_threads(args.threads)
    common = {"workers": args.workers, "threads": args.threads}
    quick = {"model": "tiny", "max_tokens": 12, "n_qa": 24, "round_steps": 2, "sc": 2,
             "train": {"max_len": 256, "pack_len": 512, "batch_size": 1, "lora_r": 4}}
    t0 = time.monotonic()
    if args.cmd == "pilot":
        pilot(out, args.families.split(","), 12 if args.quick else 60, 24 if args.quick else 600,
              {**common, **(quick if args.quick else {})})
    else:
        sizes = {"n_test": 12, "n_meta": 8, "n_pool": 8, "gate": (0.0, 1.0)} if args.quick else {}
        Lab(Settings(out=out, **common, **(quick | sizes if args.quick else {}))).run()
        print(tables(str(out / "selfevo.duckdb")))
    print(f"\ntotal {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()
