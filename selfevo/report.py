"""The audit report: one self-contained HTML file built from the store alone.

Python gathers the data: one function per section, returning plain data (counts, formatted
cells, chart geometry). The markup lives in ``selfevo/templates/report.html.j2``, rendered by
Jinja2 with autoescaping on, so every piece of text from the store is escaped by the template
engine and never by hand. Everything is inline (CSS, SVG charts, a few lines of JS that check
the page rendered), so the file opens offline, can be mailed or archived next to a snapshot,
and never fetches anything.

Sections: corpus at a glance, curation funnel (per run and step), verdict agreement (teacher
verdict vs the gold answer, and LLM teacher vs reference grader on the same response), dedup
clusters, decontamination hits, accuracy per model/round (direct vs refine, 95% intervals),
tokens and cost per model, length histograms. Each one says so when the store has nothing
for it yet.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

    from corpus.store import Store

#: Most records scored in Python for the verdict-agreement section (answer extraction costs
#: ~0.1 ms a record): above it, a seeded random sample of this size is scored, and said so.
AGREEMENT_LIMIT = 20_000

TEMPLATES = Path(__file__).resolve().parent / "templates"
COLOURS = {"a": "#3b6ea8", "b": "#e07b39", "ok": "#4a9a5b", "bad": "#c44e52", "grid": "#ddd"}

SECTIONS = [
    ("corpus", "Corpus at a glance"),
    ("funnel", "Curation funnel"),
    ("agreement", "Verdict agreement"),
    ("dedup", "Dedup clusters"),
    ("decontam", "Decontamination hits"),
    ("accuracy", "Accuracy per model and round"),
    ("paired", "Paired comparisons"),
    ("cost", "Tokens and cost per model"),
    ("lengths", "Length histograms"),
]

Data = dict[str, Any]


# -- tables and chart geometry (the template draws them) ------------------------------------
@dataclass
class Cell:
    """One table cell: its text and CSS class (``num`` right-aligned, ``long`` may break)."""

    text: str
    cls: str = ""


@dataclass
class Table:
    """A table's headers and rows of cells."""

    headers: list[str]
    rows: list[list[Cell]]
    cls: str = ""


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> Table:
    """A table of values: numbers formatted and right-aligned, long words allowed to break."""
    return Table(list(headers), [[_cell(v) for v in row] for row in rows], cls)


def _cell(v: Any) -> Cell:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return Cell(_fmt(v), "num")
    text = "" if v is None else str(v)
    if any(len(w) > 30 for w in text.split()):  # ids, hashes, paths: may break anywhere
        return Cell(text, "long")
    return Cell(text)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


@dataclass
class Bar:
    """One horizontal bar: where it is, how long, and what it says."""

    label: str  # clipped to fit left of the bar
    title: str  # the tooltip: full label and value
    value: str
    y: float
    w: float


@dataclass
class HBars:
    """Horizontal bar chart: one labelled bar per (label, value)."""

    width: int
    height: int
    label_width: int
    bar_height: int
    colour: str
    bars: list[Bar]


def hbars(rows: Sequence[tuple[str, float]], *, unit: str = "", width: int = 720,
          colour: str = COLOURS["a"]) -> HBars | None:
    """Geometry of a horizontal bar chart (None when there are no rows)."""
    if not rows:
        return None
    top = max((v for _, v in rows), default=0) or 1
    lw, bar_h, gap = 220, 18, 6
    bars = []
    for i, (label, v) in enumerate(rows):
        value = f"{_fmt(v)}{unit}"
        bars.append(Bar(label=_clip(label, 34), title=f"{label}: {value}", value=value,
                        y=gap + i * (bar_h + gap), w=round(max(0.0, (width - lw - 90) * v / top), 1)))
    return HBars(width, len(rows) * (bar_h + gap) + gap, lw, bar_h, colour, bars)


@dataclass
class Histogram:
    """Vertical histogram: bars of (low, high, count) bins, the range on the x axis."""

    width: int
    height: int
    pad: int
    xlabel: str
    low: str
    high: str
    top: int
    colour: str
    bars: list[dict[str, Any]] = field(default_factory=list)  # x, y, w, h, title


def histogram(bins: Sequence[tuple[float, float, int]], *, xlabel: str, width: int = 340,
              colour: str = COLOURS["a"]) -> Histogram | None:
    """Geometry of a histogram (None when there are no bins)."""
    if not bins:
        return None
    height, pad = 160, 28
    top = max(c for _, _, c in bins) or 1
    bw = (width - 2 * pad) / len(bins)
    chart = Histogram(width, height, pad, xlabel, _fmt(bins[0][0]), _fmt(bins[-1][1]), top,
                      colour)
    for i, (lo, hi, c) in enumerate(bins):
        bh = (height - 2 * pad) * c / top
        chart.bars.append({"x": round(pad + i * bw, 1), "y": round(height - pad - bh, 1),
                           "w": round(max(bw - 1, 1), 1), "h": round(bh, 1),
                           "title": f"{_fmt(lo)}–{_fmt(hi)}: {c}"})
    return chart


@dataclass
class AccuracyChart:
    """Grouped horizontal bars (direct, refine) with 95% interval whiskers, 0–100 %."""

    width: int
    height: int
    label_width: int
    grid: list[dict[str, Any]]  # x, label of the 0/25/50/75/100 % lines
    rows: list[dict[str, Any]]  # y, label, bars: [y, w, h, colour, title, lo, hi, mid, top, bottom]
    colours: dict[str, str]


def accuracy_chart(rows: Sequence[tuple[str, Data | None, Data | None]],
                   width: int = 760) -> AccuracyChart | None:
    """Geometry of the accuracy chart: per row a direct and a refine bar with whiskers."""
    if not rows:
        return None
    lw, bar_h, gap = 260, 12, 10
    scale = (width - lw - 70) / 100
    height = len(rows) * (2 * bar_h + gap) + gap + 24
    grid = [{"x": round(lw + t * scale, 1), "label": f"{t}%"} for t in range(0, 101, 25)]
    out = []
    for i, (label, direct, refine) in enumerate(rows):
        y0 = gap + i * (2 * bar_h + gap)
        bars = []
        for j, (mode, cell, colour) in enumerate(
                (("direct", direct, COLOURS["a"]), ("refine", refine, COLOURS["b"]))):
            if not cell:
                continue
            y = y0 + j * bar_h
            acc, lo, hi = (100 * (cell.get(k) or 0) for k in ("accuracy", "ci_low", "ci_high"))
            bars.append({"y": y, "w": round(acc * scale, 1), "h": bar_h - 2, "colour": colour,
                         "title": f"{label} {mode}: {acc:.1f}% [{lo:.1f}, {hi:.1f}]",
                         "lo": round(lw + lo * scale, 1), "hi": round(lw + hi * scale, 1),
                         "mid": y + bar_h / 2 - 1, "top": y + 1, "bottom": y + bar_h - 3})
        out.append({"y": y0 + bar_h + 4, "label": _clip(label, 40), "bars": bars})
    return AccuracyChart(width, height, lw, grid, out,
                         {"direct": COLOURS["a"], "refine": COLOURS["b"]})


def _clip(text: Any, n: int) -> str:
    s = str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# -- sections: one function each, returning plain data for the template --------------------
def section_corpus(store: Store) -> Data:
    """Totals, records by kind / round / source / verdict, prompts by source and split."""
    totals = store.query(
        "SELECT (SELECT count(*) FROM prompts), (SELECT count(*) FROM records),"
        " (SELECT count(*) FROM calls), (SELECT count(*) FROM runs),"
        " (SELECT count(*) FROM snapshots), (SELECT count(*) FROM models),"
        " (SELECT count(*) FROM evals)")[0]
    names = ["prompts", "records", "calls", "runs", "snapshots", "models", "evals"]
    data: Data = {"cards": [(n, f"{v:,}") for n, v in zip(names, totals, strict=True)],
                  "empty": None, "charts": [], "snapshots": None}
    if not totals[1] and not totals[0]:
        data["empty"] = "The store has no prompts or records yet."
        return data
    for title, sql in (
        ("records by kind", "SELECT kind, count(*) FROM records GROUP BY 1 ORDER BY 2 DESC"),
        ("records by round", "SELECT 'round ' || round, count(*) FROM records GROUP BY round "
                             "ORDER BY round"),
        ("records by source", "SELECT coalesce(r.source, p.source, '(none)'), count(*) FROM "
                              "records r LEFT JOIN prompts p USING (prompt_id) GROUP BY 1 "
                              "ORDER BY 2 DESC LIMIT 20"),
        ("records by verdict", "SELECT coalesce(verdict, '(none)'), count(*) FROM records "
                               "GROUP BY 1 ORDER BY 2 DESC"),
        ("prompts by source / split", "SELECT coalesce(source, '(none)') || ' / ' || "
                                      "coalesce(split, '-'), count(*) FROM prompts GROUP BY 1 "
                                      "ORDER BY 2 DESC LIMIT 20"),
    ):
        rows = store.query(sql)
        if rows:
            data["charts"].append((title, hbars([(str(k), v) for k, v in rows], width=460)))
    snaps = store.query("SELECT name, n, content_hash, parent, created_at FROM snapshots "
                        "ORDER BY created_at")
    if snaps:
        data["snapshots"] = table(["name", "records", "content hash", "parent", "created"],
                                  [(n, k, h, p, str(c)[:19]) for n, k, h, p, c in snaps])
    return data


def section_funnel(store: Store) -> Data:
    """Per run that wrote decisions: records selected, then what each step kept and dropped."""
    from corpus.funnel import run_funnel

    with store.connection() as con:
        ids = [r[0] for r in con.execute(
            "SELECT r.run_id FROM runs r WHERE EXISTS (SELECT 1 FROM decisions d "
            "WHERE d.run_id = r.run_id) ORDER BY r.started_at, r.run_id").fetchall()]
        funnels = [run_funnel(con, i) for i in ids]
    runs = []
    for f in funnels:
        bars = [("selected", float(f.selected))] + [
            (f"after {r.step}", float(r.remaining)) for r in f.rows]
        rows = [(i, r.step, r.checked, r.passed, r.dropped, r.remaining,
                 _pct(r.remaining / f.selected if f.selected else None))
                for i, r in enumerate(f.rows, 1)]
        runs.append({"run_id": f.run_id, "command": f.command, "status": f.status,
                     "chart": hbars(bars, colour=COLOURS["ok"]),
                     "table": table(["#", "step", "checked", "passed", "dropped here",
                                     "remaining", "kept"], rows)})
    empty = None if runs else ("No curation decisions yet (run 'selfevo curate filter' or "
                               "'curate dedup').")
    return {"empty": empty, "runs": runs}


def section_agreement(store: Store) -> Data:
    """Teacher verdict vs the gold answer (per teacher), and LLM teacher vs reference grader."""
    where = "gold_answer IS NOT NULL AND kind IN ('meta', 'self')"
    total = store.query(f"SELECT count(*) FROM records_full WHERE {where}")[0][0]
    sample = (f" USING SAMPLE reservoir({AGREEMENT_LIMIT} ROWS) REPEATABLE (42)"
              if total > AGREEMENT_LIMIT else "")
    rows = store.query(
        f"""SELECT coalesce(teacher, '(unknown)'), kind, verdict, response, refinement,
                   gold_answer
            FROM (SELECT * FROM records_full WHERE {where}){sample}"""
    )
    data: Data = {"empty": None, "note": None, "table": None, "pairs": None}
    if not rows:
        data["empty"] = "No meta/self records with a gold answer yet."
    else:
        if sample:
            data["note"] = (f"Scored on a seeded random sample of {len(rows):,} of {total:,} "
                            "labelled records.")
        data["table"] = table(
            ["teacher", "kind", "records", "agreement", "correct & gold ✓", "correct & gold ✗",
             "incorrect & gold ✓", "incorrect & gold ✗", "no verdict",
             "refinement matches gold"], _agreement_rows(rows), cls="agreement")
    pairs = store.query(
        """SELECT t.teacher, count(*),
                  count(*) FILTER (WHERE t.verdict = r.verdict)
           FROM records t JOIN records r
             ON t.prompt_id = r.prompt_id AND t.response = r.response
           WHERE r.teacher = 'reference' AND t.teacher <> 'reference'
             AND t.verdict IS NOT NULL AND r.verdict IS NOT NULL
           GROUP BY 1 ORDER BY 1""")
    if pairs:
        data["pairs"] = table(["teacher", "pairs", "same verdict", "agreement"],
                              [(t, n, k, _pct(k / n)) for t, n, k in pairs])
    return data


def _agreement_rows(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Per (teacher, kind): verdict vs gold counts, agreement and refinement accuracy."""
    from curation.answers import answers_match, extract_answer

    stats: dict[tuple[str, str], dict[str, int]] = {}
    for teacher, kind, verdict, response, refinement, gold in rows:
        s = stats.setdefault((teacher, kind), dict.fromkeys(
            ("n", "tp", "fp", "fn", "tn", "none", "ref_ok", "ref_n"), 0))
        s["n"] += 1
        gold_ok = answers_match(extract_answer(response), gold)
        if verdict is None:
            s["none"] += 1
        else:
            said_ok = verdict == "correct"
            s[{(True, True): "tp", (True, False): "fp", (False, True): "fn",
               (False, False): "tn"}[(said_ok, gold_ok)]] += 1
        if refinement:
            s["ref_n"] += 1
            s["ref_ok"] += answers_match(extract_answer(refinement), gold)
    out = []
    for (teacher, kind), s in sorted(stats.items()):
        judged = s["tp"] + s["fp"] + s["fn"] + s["tn"]
        out.append((teacher, kind, s["n"],
                    _pct((s["tp"] + s["tn"]) / judged if judged else None),
                    s["tp"], s["fp"], s["fn"], s["tn"], s["none"],
                    _pct(s["ref_ok"] / s["ref_n"] if s["ref_n"] else None)))
    return out


def section_dedup(store: Store) -> Data:
    """Cluster-size histogram and drop counts of the dedup steps (latest decision per record)."""
    rows = store.query(
        """SELECT step, count(*), count(*) FILTER (WHERE NOT passed)
           FROM latest_decisions WHERE step LIKE 'dedup%' GROUP BY 1 ORDER BY 1""")
    data: Data = {"empty": None, "table": None, "no_clusters": None, "steps": []}
    if not rows:
        data["empty"] = "No dedup decisions yet (run 'selfevo curate dedup')."
        return data
    data["table"] = table(["step", "records", "dropped as duplicates"], rows)
    clusters = store.query(
        """WITH c AS (
             SELECT step,
                    coalesce(detail->>'cluster_id', detail->>'cluster') AS cid,
                    count(*) AS members,
                    max(TRY_CAST(coalesce(detail->>'cluster_size', detail->>'size') AS INTEGER))
                        AS size
             FROM latest_decisions WHERE step LIKE 'dedup%' GROUP BY 1, 2)
           SELECT step, coalesce(size, members) AS s, count(*) FROM c
           WHERE cid IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2""")
    if not clusters:
        data["no_clusters"] = "The dedup decisions carry no cluster ids."
        return data
    by_step: dict[str, list[tuple[str, float]]] = {}
    singletons: dict[str, int] = {}
    for step, size, n in clusters:
        if size <= 1:  # a record alone in its cluster: not a duplicate group
            singletons[step] = singletons.get(step, 0) + n
        else:
            by_step.setdefault(step, []).append((f"size {size}", float(n)))
    for step in sorted(set(by_step) | set(singletons)):
        data["steps"].append({"step": step, "singletons": f"{singletons.get(step, 0):,}",
                              "chart": hbars(by_step.get(step, []), unit=" clusters")})
    return data


def section_decontam(store: Store) -> Data:
    """How many records matched a benchmark, per benchmark, with the first matches."""
    rows = store.query(
        """SELECT coalesce(detail->>'benchmark', detail->>'against', params->>'against', '?'),
                  count(*), count(*) FILTER (WHERE NOT passed)
           FROM latest_decisions WHERE step LIKE 'decontam%' GROUP BY 1 ORDER BY 1""")
    if not rows:
        return {"empty": "No decontamination decisions yet (run 'selfevo curate decontam').",
                "table": None, "hits": None}
    hits = store.query(
        """SELECT d.record_id, p.text, d.reason, d.detail FROM latest_decisions d
           LEFT JOIN records r USING (record_id) LEFT JOIN prompts p USING (prompt_id)
           WHERE d.step LIKE 'decontam%' AND NOT d.passed ORDER BY d.record_id LIMIT 25""")
    return {"empty": None,
            "table": table(["against", "records checked", "hits (dropped)"], rows),
            "hits": table(["record", "prompt", "reason", "detail"],
                          [(rid, _clip(text, 160), reason, _clip(detail, 200))
                           for rid, text, reason, detail in hits]) if hits else None}


def section_accuracy(store: Store) -> Data:
    """evals: direct vs refine accuracy with 95% intervals, per benchmark, oldest first."""
    from selfevo.evaluate import compare_evals, format_accuracy

    rows = compare_evals(store)
    benchmarks = []
    for bench in sorted({r["benchmark"] for r in rows}):
        group = [r for r in rows if r["benchmark"] == bench]
        labels = [(f"round {r['round']} · " if r["round"] is not None else "")
                  + f"{_model_label(r)} · {r['run_id'][-6:]}" for r in group]
        benchmarks.append({
            "name": bench,
            "chart": accuracy_chart([(lab, r["direct"], r["refine"])
                                     for lab, r in zip(labels, group, strict=True)]),
            "table": table(
                ["round", "model", "model_id", "snapshot", "eval run", "n", "direct", "refine"],
                [("-" if r["round"] is None else r["round"], r["model"], r["model_id"] or "-",
                  r["snapshot_hash"] or "-", r["run_id"], r["n"],
                  format_accuracy(r["direct"]), format_accuracy(r["refine"])) for r in group],
                cls="acc")})
    return {"empty": None if rows else "No evaluations yet (run 'selfevo eval run').",
            "benchmarks": benchmarks}


def section_paired(store: Store) -> Data:
    """Evaluations on the same items compared item by item (:mod:`selfevo.comparison`):
    refine vs direct of each run, and each model vs the one evaluated before it; each
    family's exact McNemar p-values Holm-adjusted."""
    from selfevo.comparison import compare_pairs, evaluation_pairs

    pairs = evaluation_pairs(store)
    tables = {}
    for family, headers in (
            ("refine", ["model", "benchmark", "n", "direct", "refine", "wrong→right",
                        "right→wrong", "McNemar p", "Holm p", "critic sensitivity",
                        "critic specificity"]),
            ("neighbours", ["A", "B", "benchmark", "n", "A right", "B right", "only A",
                            "only B", "McNemar p", "Holm p"])):
        results = compare_pairs(store, pairs[family]) if pairs[family] else []
        tables[family] = table(headers, [_paired_row(family, r) for r in results],
                               cls="paired") if results else None
    return {"empty": None if any(tables.values()) else
            "No evaluations with items to pair yet (run 'selfevo eval run' twice, or with "
            "--mode both).", **tables}


def _paired_row(family: str, r: Data) -> list[Any]:
    """One comparison as table cells (p-values to 3 significant digits)."""
    a, b, t = r["accuracy"]["a"], r["accuracy"]["b"], r["table"]
    p = (f"{r['mcnemar_p']:.3g}", f"{r['holm_p']:.3g}")
    if family == "neighbours":
        return [r["a"]["model"], r["b"]["model"], r["a"]["benchmark"], r["items"]["paired"],
                f"{a['correct']} ({_pct(a['accuracy'])})",
                f"{b['correct']} ({_pct(b['accuracy'])})", t["a_only"], t["b_only"], *p]
    critic = r["critic"]["b"] or {}
    tr = r["transitions"] or {"wrong_to_right": "-", "right_to_wrong": "-"}
    return [r["a"]["model"], r["a"]["benchmark"], r["items"]["paired"],
            f"{a['correct']} ({_pct(a['accuracy'])})", f"{b['correct']} ({_pct(b['accuracy'])})",
            tr["wrong_to_right"], tr["right_to_wrong"], *p,
            _pct(critic.get("sensitivity")), _pct(critic.get("specificity"))]


def _model_label(r: Data) -> str:
    model = r["model"]
    return model if len(model) <= 28 else "…" + model[-27:]


def section_cost(store: Store) -> Data:
    """Per model (and local weights): calls by status, tokens, cost and mean latency.

    Local models are told apart by their weights fingerprint (``calls.endpoint``), so two
    checkpoints with the same readable name (two rounds' ``final``) are two rows.
    """
    rows = store.query(
        """SELECT model, CASE WHEN endpoint LIKE 'weights:%' THEN endpoint END AS weights,
                  count(*), count(*) FILTER (WHERE status = 'ok'),
                  count(*) FILTER (WHERE status = 'failed'),
                  count(*) FILTER (WHERE status = 'pending'),
                  coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
                  coalesce(sum(cost), 0.0), avg(latency)
           FROM calls GROUP BY 1, 2  -- most tokens first ("ORDER BY 7 + 8" is a constant)
           ORDER BY coalesce(sum(prompt_tokens), 0) + coalesce(sum(completion_tokens), 0) DESC,
                    1, 2""")
    if not rows:
        return {"empty": "No model calls in the ledger yet.", "chart": None, "table": None}
    shared = {m for m, *_ in rows if sum(1 for r in rows if r[0] == m) > 1}
    labels = [m if m not in shared else f"{m} ({(w or '-').removeprefix('weights:')[:8]})"
              for m, w, *_ in rows]
    return {"empty": None,
            "chart": hbars([(lab, float(r[6] + r[7])) for lab, r in zip(labels, rows,
                                                                         strict=True)],
                           unit=" tokens"),
            "table": table(
                ["model", "weights", "calls", "ok", "failed", "pending", "prompt tokens",
                 "completion tokens", "cost (USD)", "mean latency (s)"],
                [(m, w or "-", n, ok, f, p, pt, ct, round(c, 6),
                  round(lat, 3) if lat is not None else "-")
                 for m, w, n, ok, f, p, pt, ct, c, lat in rows], cls="cost")}


def section_lengths(store: Store) -> Data:
    """Histograms of response, feedback and refinement lengths in characters."""
    columns = []
    for col in ("response", "feedback", "refinement"):
        n, lo, hi, med = store.query(
            f"SELECT count({col}), min(length({col})), max(length({col})),"
            f" median(length({col})) FROM records WHERE {col} IS NOT NULL")[0]
        if not n:
            columns.append({"name": col, "empty": f"No {col}s yet.", "n": "0", "median": "-",
                            "chart": None})
            continue
        width = max(1, -(-(hi - lo + 1) // 20))  # ceil: 20 bins at most
        counts = dict(store.query(
            f"SELECT (length({col}) - ?) // ?, count(*) FROM records"
            f" WHERE {col} IS NOT NULL GROUP BY 1", [lo, width]))
        bins = [(lo + b * width, lo + (b + 1) * width - 1, int(counts.get(b, 0)))
                for b in range((hi - lo) // width + 1)]
        columns.append({"name": col, "empty": None, "n": f"{n:,}", "median": f"{med:,.0f}",
                        "chart": histogram(bins, xlabel="characters")})
    return {"columns": columns}


#: Section id -> the function that gathers its data (the template draws it).
GATHERERS: dict[str, Callable[[Store], Data]] = {
    "corpus": section_corpus, "funnel": section_funnel, "agreement": section_agreement,
    "dedup": section_dedup, "decontam": section_decontam, "accuracy": section_accuracy,
    "paired": section_paired, "cost": section_cost, "lengths": section_lengths,
}


# -- rendering ------------------------------------------------------------------------------
@functools.cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report template: autoescaping on, undefined is an error."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)


def gather(store: Store, *, debug: bool = False) -> list[Data]:
    """Every section's data in order; a section that fails carries its error instead.

    ``debug`` re-raises the failure (``selfevo --debug report``) instead of reporting it in
    the page, where one broken section would otherwise hide nothing else.
    """
    out = []
    with store.connection():  # one connection for all queries (a second or so at most)
        for sid, heading in SECTIONS:
            try:
                data, error = GATHERERS[sid](store), None
            except Exception as exc:
                if debug:
                    raise
                data, error = {}, str(exc)
            out.append({"id": sid, "heading": heading, "data": data, "error": error})
    return out


def render_report(store: Store, *, title: str | None = None, debug: bool = False) -> str:
    """The whole report as one HTML string."""
    return render_page(gather(store, debug=debug), store_path=store.path, title=title)


def render_page(sections: list[Data], *, store_path: Path, title: str | None = None) -> str:
    """The HTML page of gathered ``sections`` (what :func:`gather` returns)."""
    from corpus.version import code_version

    return environment().get_template("report.html.j2").render(
        title=title or f"selfevo report — {store_path.name}", store=str(store_path),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), version=code_version(),
        sections=sections)


def write_report(db: str, out: str | Path, *, debug: bool = False) -> Path:
    """Render the store at ``db`` to ``out`` (read-only; works while a job runs)."""
    from corpus.store import Store

    out = Path(out)
    with Store.open_readonly(db) as store:
        text = render_report(store, debug=debug)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
