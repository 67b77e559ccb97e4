"""The audit report: one self-contained HTML file built from the store alone.

Everything is inline (CSS, SVG charts drawn here in Python, a few lines of JS that check the
page rendered), so the file opens offline, can be mailed or archived next to a snapshot, and
never fetches anything. Every piece of text from the store goes through :func:`html.escape`.

Sections: corpus at a glance, curation funnel (per run and step), verdict agreement (teacher
verdict vs the gold answer, and LLM teacher vs reference grader on the same response), dedup
clusters, decontamination hits, accuracy per model/round (direct vs refine, 95% intervals),
tokens and cost per model, length histograms. Each one says so when the store has nothing
for it yet.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corpus.store import Store

#: Most records scored in Python for the verdict-agreement section (answer extraction costs
#: ~0.1 ms a record): above it, a seeded random sample of this size is scored, and said so.
AGREEMENT_LIMIT = 20_000

COLOURS = {"a": "#3b6ea8", "b": "#e07b39", "ok": "#4a9a5b", "bad": "#c44e52", "grid": "#ddd"}

SECTIONS = [
    ("corpus", "Corpus at a glance"),
    ("funnel", "Curation funnel"),
    ("agreement", "Verdict agreement"),
    ("dedup", "Dedup clusters"),
    ("decontam", "Decontamination hits"),
    ("accuracy", "Accuracy per model and round"),
    ("cost", "Tokens and cost per model"),
    ("lengths", "Length histograms"),
]


def esc(value: Any) -> str:
    """HTML-escaped text of any value (None → empty)."""
    return "" if value is None else html.escape(str(value), quote=True)


# -- small HTML/SVG builders ----------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; cells are escaped, numbers right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, int | float) and not isinstance(v, bool)
            if num:
                cells.append(f'<td class="num">{esc(_fmt(v))}</td>')
            elif any(len(w) > 30 for w in str(v).split()):  # ids, hashes, paths: may break
                cells.append(f'<td class="long">{esc(v)}</td>')
            else:
                cells.append(f"<td>{esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def empty(message: str) -> str:
    """The placeholder of a section with no data."""
    return f'<p class="empty">{esc(message)}</p>'


def svg_hbars(rows: Sequence[tuple[str, float]], *, unit: str = "", width: int = 720,
              colour: str = COLOURS["a"]) -> str:
    """Horizontal bar chart: one labelled bar per (label, value)."""
    if not rows:
        return ""
    top = max((v for _, v in rows), default=0) or 1
    lw, bar_h, gap = 220, 18, 6
    h = len(rows) * (bar_h + gap) + gap
    parts = []
    for i, (label, v) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        w = max(0.0, (width - lw - 90) * v / top)
        parts.append(
            f'<text x="{lw - 6}" y="{y + 13}" text-anchor="end">{esc(_clip(label, 34))}</text>'
            f'<rect x="{lw}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}">'
            f"<title>{esc(label)}: {esc(_fmt(v))}{esc(unit)}</title></rect>"
            f'<text x="{lw + w + 4:.1f}" y="{y + 13}">{esc(_fmt(v))}{esc(unit)}</text>'
        )
    return _svg(width, h, "".join(parts))


def svg_histogram(bins: Sequence[tuple[float, float, int]], *, xlabel: str, width: int = 340,
                  colour: str = COLOURS["a"]) -> str:
    """Vertical histogram of (low, high, count) bins with the range on the x axis."""
    if not bins:
        return ""
    height, pad = 160, 28
    top = max(c for _, _, c in bins) or 1
    bw = (width - 2 * pad) / len(bins)
    parts = [f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
             f'stroke="#888"/>']
    for i, (lo, hi, c) in enumerate(bins):
        bh = (height - 2 * pad) * c / top
        x, y = pad + i * bw, height - pad - bh
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" '
                     f'height="{bh:.1f}" fill="{colour}"><title>{esc(_fmt(lo))}–{esc(_fmt(hi))}'
                     f": {c}</title></rect>")
    parts.append(f'<text x="{pad}" y="{height - 10}">{esc(_fmt(bins[0][0]))}</text>')
    parts.append(f'<text x="{width - pad}" y="{height - 10}" text-anchor="end">'
                 f"{esc(_fmt(bins[-1][1]))}</text>")
    parts.append(f'<text x="{width / 2:.0f}" y="{height - 2}" text-anchor="middle" '
                 f'class="axis">{esc(xlabel)}</text>')
    parts.append(f'<text x="{pad}" y="14">max {top:,}</text>')
    return _svg(width, height, "".join(parts))


def svg_accuracy(rows: Sequence[tuple[str, dict[str, Any] | None, dict[str, Any] | None]],
                 width: int = 760) -> str:
    """Grouped horizontal bars (direct, refine) with 95% interval whiskers, 0–100 %."""
    if not rows:
        return ""
    lw, bar_h, gap = 260, 12, 10
    scale = (width - lw - 70) / 100
    h = len(rows) * (2 * bar_h + gap) + gap + 24
    parts = []
    for t in range(0, 101, 25):
        x = lw + t * scale
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{h - 20}" '
                     f'stroke="{COLOURS["grid"]}"/><text x="{x:.1f}" y="{h - 6}" '
                     f'text-anchor="middle">{t}%</text>')
    for i, (label, direct, refine) in enumerate(rows):
        y0 = gap + i * (2 * bar_h + gap)
        parts.append(f'<text x="{lw - 6}" y="{y0 + bar_h + 4}" text-anchor="end">'
                     f"{esc(_clip(label, 40))}</text>")
        for j, (mode, cell, colour) in enumerate(
                (("direct", direct, COLOURS["a"]), ("refine", refine, COLOURS["b"]))):
            if not cell:
                continue
            y = y0 + j * bar_h
            acc, lo, hi = (100 * (cell.get(k) or 0) for k in ("accuracy", "ci_low", "ci_high"))
            tip = f"{label} {mode}: {acc:.1f}% [{lo:.1f}, {hi:.1f}]"
            parts.append(
                f'<rect x="{lw}" y="{y}" width="{acc * scale:.1f}" height="{bar_h - 2}" '
                f'fill="{colour}"><title>{esc(tip)}</title></rect>'
                f'<line x1="{lw + lo * scale:.1f}" y1="{y + bar_h / 2 - 1}" '
                f'x2="{lw + hi * scale:.1f}" y2="{y + bar_h / 2 - 1}" stroke="#222"/>'
                f'<line x1="{lw + lo * scale:.1f}" y1="{y + 1}" x2="{lw + lo * scale:.1f}" '
                f'y2="{y + bar_h - 3}" stroke="#222"/>'
                f'<line x1="{lw + hi * scale:.1f}" y1="{y + 1}" x2="{lw + hi * scale:.1f}" '
                f'y2="{y + bar_h - 3}" stroke="#222"/>'
            )
    legend = (f'<p class="legend"><span style="background:{COLOURS["a"]}"></span>direct '
              f'<span style="background:{COLOURS["b"]}"></span>refine — whiskers: 95% Wilson '
              "interval</p>")
    return _svg(width, h, "".join(parts)) + legend


def _svg(width: int, height: float, body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" '
            f'viewBox="0 0 {width} {height:.0f}" role="img">{body}</svg>')


def _clip(text: Any, n: int) -> str:
    s = str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# -- sections -------------------------------------------------------------------------------
def section_corpus(store: Store) -> str:
    """Totals, records by kind / round / source / verdict, prompts by source and split."""
    totals = store.query(
        "SELECT (SELECT count(*) FROM prompts), (SELECT count(*) FROM records),"
        " (SELECT count(*) FROM calls), (SELECT count(*) FROM runs),"
        " (SELECT count(*) FROM snapshots), (SELECT count(*) FROM models),"
        " (SELECT count(*) FROM evals)")[0]
    names = ["prompts", "records", "calls", "runs", "snapshots", "models", "evals"]
    out = ['<div class="cards">' + "".join(
        f'<div class="card"><b data-count="{n}">{v:,}</b><span>{n}</span></div>'
        for n, v in zip(names, totals, strict=True)) + "</div>"]
    if not totals[1] and not totals[0]:
        return "".join(out) + empty("The store has no prompts or records yet.")
    grids = []
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
            grids.append(f"<div><h3>{esc(title)}</h3>"
                         + svg_hbars([(str(k), v) for k, v in rows], width=460) + "</div>")
    out.append('<div class="grid">' + "".join(grids) + "</div>")
    snaps = store.query("SELECT name, n, content_hash, parent, created_at FROM snapshots "
                        "ORDER BY created_at")
    if snaps:
        out.append("<h3>snapshots</h3>" + table(
            ["name", "records", "content hash", "parent", "created"],
            [(n, k, h, p, str(c)[:19]) for n, k, h, p, c in snaps]))
    return "".join(out)


def section_funnel(store: Store) -> str:
    """Per run that wrote decisions: records selected, then what each step kept and dropped."""
    from corpus.funnel import run_funnel

    with store.connection() as con:
        ids = [r[0] for r in con.execute(
            "SELECT r.run_id FROM runs r WHERE EXISTS (SELECT 1 FROM decisions d "
            "WHERE d.run_id = r.run_id) ORDER BY r.started_at, r.run_id").fetchall()]
        funnels = [run_funnel(con, i) for i in ids]
    if not funnels:
        return empty("No curation decisions yet (run 'selfevo curate filter' or 'curate dedup').")
    out = []
    for f in funnels:
        bars = [("selected", float(f.selected))] + [
            (f"after {r.step}", float(r.remaining)) for r in f.rows]
        rows = [(i, r.step, r.checked, r.passed, r.dropped, r.remaining,
                 _pct(r.remaining / f.selected if f.selected else None))
                for i, r in enumerate(f.rows, 1)]
        out.append(
            f'<div class="run"><h3>run {esc(f.run_id)} <small>({esc(f.command)}, '
            f"{esc(f.status)})</small></h3>" + svg_hbars(bars, colour=COLOURS["ok"])
            + table(["#", "step", "checked", "passed", "dropped here", "remaining", "kept"],
                    rows) + "</div>")
    return "".join(out)


def section_agreement(store: Store) -> str:
    """Teacher verdict vs the gold answer (per teacher), and LLM teacher vs reference grader."""
    from curation.answers import answers_match, extract_answer

    where = "gold_answer IS NOT NULL AND kind IN ('meta', 'self')"
    total = store.query(f"SELECT count(*) FROM records_full WHERE {where}")[0][0]
    sample = (f" USING SAMPLE reservoir({AGREEMENT_LIMIT} ROWS) REPEATABLE (42)"
              if total > AGREEMENT_LIMIT else "")
    rows = store.query(
        f"""SELECT coalesce(teacher, '(unknown)'), kind, verdict, response, refinement,
                   gold_answer
            FROM (SELECT * FROM records_full WHERE {where}){sample}"""
    )
    out = []
    if not rows:
        out.append(empty("No meta/self records with a gold answer yet."))
    else:
        if sample:
            out.append(f'<p class="note">Scored on a seeded random sample of '
                       f"{len(rows):,} of {total:,} labelled records.</p>")
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
        table_rows = []
        for (teacher, kind), s in sorted(stats.items()):
            judged = s["tp"] + s["fp"] + s["fn"] + s["tn"]
            table_rows.append((
                teacher, kind, s["n"], _pct((s["tp"] + s["tn"]) / judged if judged else None),
                s["tp"], s["fp"], s["fn"], s["tn"], s["none"],
                _pct(s["ref_ok"] / s["ref_n"] if s["ref_n"] else None)))
        out.append(
            "<p>Verdict says whether the <em>response</em> is correct; gold = the extracted "
            "final answer of the response matches the prompt's gold answer "
            "(curation.answers).</p>" + table(
                ["teacher", "kind", "records", "agreement", "correct & gold ✓",
                 "correct & gold ✗", "incorrect & gold ✓", "incorrect & gold ✗",
                 "no verdict", "refinement matches gold"], table_rows, cls="agreement"))
    pairs = store.query(
        """SELECT t.teacher, count(*),
                  count(*) FILTER (WHERE t.verdict = r.verdict)
           FROM records t JOIN records r
             ON t.prompt_id = r.prompt_id AND t.response = r.response
           WHERE r.teacher = 'reference' AND t.teacher <> 'reference'
             AND t.verdict IS NOT NULL AND r.verdict IS NOT NULL
           GROUP BY 1 ORDER BY 1""")
    if pairs:
        out.append("<h3>LLM teacher vs reference grader (same prompt and response)</h3>" + table(
            ["teacher", "pairs", "same verdict", "agreement"],
            [(t, n, k, _pct(k / n)) for t, n, k in pairs]))
    return "".join(out)


def section_dedup(store: Store) -> str:
    """Cluster-size histogram and drop counts of the dedup steps (latest decision per record)."""
    rows = store.query(
        """SELECT step, count(*), count(*) FILTER (WHERE NOT passed)
           FROM latest_decisions WHERE step LIKE 'dedup%' GROUP BY 1 ORDER BY 1""")
    if not rows:
        return empty("No dedup decisions yet (run 'selfevo curate dedup').")
    out = [table(["step", "records", "dropped as duplicates"], rows)]
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
        out.append(empty("The dedup decisions carry no cluster ids."))
        return "".join(out)
    by_step: dict[str, list[tuple[str, float]]] = {}
    singletons: dict[str, int] = {}
    for step, size, n in clusters:
        if size <= 1:  # a record alone in its cluster: not a duplicate group
            singletons[step] = singletons.get(step, 0) + n
        else:
            by_step.setdefault(step, []).append((f"size {size}", float(n)))
    for step in sorted(set(by_step) | set(singletons)):
        out.append(f"<h3>{esc(step)}: duplicate clusters by size <small>"
                   f"({singletons.get(step, 0):,} singletons)</small></h3>")
        out.append(svg_hbars(by_step[step], unit=" clusters") if step in by_step
                   else empty("No duplicate clusters."))
    return "".join(out)


def section_decontam(store: Store) -> str:
    """How many records matched a benchmark, per benchmark, with the first matches."""
    rows = store.query(
        """SELECT coalesce(detail->>'benchmark', detail->>'against', params->>'against', '?'),
                  count(*), count(*) FILTER (WHERE NOT passed)
           FROM latest_decisions WHERE step LIKE 'decontam%' GROUP BY 1 ORDER BY 1""")
    if not rows:
        return empty("No decontamination decisions yet (run 'selfevo curate decontam').")
    out = [table(["against", "records checked", "hits (dropped)"], rows)]
    hits = store.query(
        """SELECT d.record_id, p.text, d.reason, d.detail FROM latest_decisions d
           LEFT JOIN records r USING (record_id) LEFT JOIN prompts p USING (prompt_id)
           WHERE d.step LIKE 'decontam%' AND NOT d.passed ORDER BY d.record_id LIMIT 25""")
    if hits:
        out.append("<h3>first hits</h3>" + table(
            ["record", "prompt", "reason", "detail"],
            [(rid, _clip(text, 160), reason, _clip(detail, 200))
             for rid, text, reason, detail in hits]))
    else:
        out.append(empty("No record matched a benchmark."))
    return "".join(out)


def section_accuracy(store: Store) -> str:
    """evals: direct vs refine accuracy with 95% intervals, per benchmark, oldest first."""
    from selfevo.evaluate import compare_evals, format_accuracy

    rows = compare_evals(store)
    if not rows:
        return empty("No evaluations yet (run 'selfevo eval run').")
    out = []
    benches = sorted({r["benchmark"] for r in rows})
    for bench in benches:
        group = [r for r in rows if r["benchmark"] == bench]
        labels = [(f"round {r['round']} · " if r["round"] is not None else "")
                  + f"{_model_label(r)} · {r['run_id'][-6:]}" for r in group]
        out.append(f"<h3>{esc(bench)}</h3>" + svg_accuracy(
            [(lab, r["direct"], r["refine"]) for lab, r in zip(labels, group, strict=True)]))
        out.append(table(
            ["round", "model", "model_id", "snapshot", "eval run", "n", "direct", "refine"],
            [("-" if r["round"] is None else r["round"], r["model"], r["model_id"] or "-",
              r["snapshot_hash"] or "-", r["run_id"], r["n"],
              format_accuracy(r["direct"]), format_accuracy(r["refine"])) for r in group],
            cls="acc"))
    return "".join(out)


def _model_label(r: dict[str, Any]) -> str:
    model = r["model"]
    return model if len(model) <= 28 else "…" + model[-27:]


def section_cost(store: Store) -> str:
    """Per model: calls by status, tokens, cost and mean latency from the call ledger."""
    rows = store.query(
        """SELECT model, count(*), count(*) FILTER (WHERE status = 'ok'),
                  count(*) FILTER (WHERE status = 'failed'),
                  count(*) FILTER (WHERE status = 'pending'),
                  coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
                  coalesce(sum(cost), 0.0), avg(latency)
           FROM calls GROUP BY model ORDER BY 6 + 7 DESC""")
    if not rows:
        return empty("No model calls in the ledger yet.")
    bars = [(m, float(pt + ct)) for m, _, _, _, _, pt, ct, _, _ in rows]
    return svg_hbars(bars, unit=" tokens") + table(
        ["model", "calls", "ok", "failed", "pending", "prompt tokens", "completion tokens",
         "cost (USD)", "mean latency (s)"],
        [(m, n, ok, f, p, pt, ct, round(c, 6), round(lat, 3) if lat is not None else "-")
         for m, n, ok, f, p, pt, ct, c, lat in rows], cls="cost")


def section_lengths(store: Store) -> str:
    """Histograms of response, feedback and refinement lengths in characters."""
    out = []
    for col in ("response", "feedback", "refinement"):
        stats = store.query(
            f"SELECT count({col}), min(length({col})), max(length({col})),"
            f" median(length({col})) FROM records WHERE {col} IS NOT NULL")[0]
        n, lo, hi, med = stats
        if not n:
            out.append(f"<div><h3>{col}</h3>{empty(f'No {col}s yet.')}</div>")
            continue
        width = max(1, -(-(hi - lo + 1) // 20))  # ceil: 20 bins at most
        counts = dict(store.query(
            f"SELECT (length({col}) - ?) // ?, count(*) FROM records"
            f" WHERE {col} IS NOT NULL GROUP BY 1", [lo, width]))
        nbins = (hi - lo) // width + 1
        bins = [(lo + b * width, lo + (b + 1) * width - 1, int(counts.get(b, 0)))
                for b in range(nbins)]
        out.append(f"<div><h3>{col} <small>n={n:,}, median {med:,.0f} chars</small></h3>"
                   + svg_histogram(bins, xlabel="characters") + "</div>")
    return '<div class="grid">' + "".join(out) + "</div>"


BUILDERS: dict[str, Callable[[Store], str]] = {
    "corpus": section_corpus, "funnel": section_funnel, "agreement": section_agreement,
    "dedup": section_dedup, "decontam": section_decontam, "accuracy": section_accuracy,
    "cost": section_cost, "lengths": section_lengths,
}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#23344d;color:#fff;padding:14px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85}nav{padding:8px 28px;background:#e9edf3}
nav a{margin-right:14px;color:#23344d}main{padding:0 28px 40px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:6px 18px 14px;
margin:18px 0}h2{font-size:18px;border-bottom:1px solid #eee;padding-bottom:4px}
h3{font-size:14px;margin:14px 0 6px}small{color:#777;font-weight:normal}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;max-width:520px;
overflow-wrap:break-word}td.long{overflow-wrap:anywhere}th{background:#f2f4f7}td.num{text-align:right;
font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}.card{background:#f2f4f7;
border-radius:6px;padding:8px 14px;min-width:90px}.card b{display:block;font-size:20px}
.card span{color:#666}.grid{display:flex;flex-wrap:wrap;gap:18px}
.empty{color:#777;font-style:italic}svg text{font-size:11px;fill:#333}
svg .axis{fill:#666}.legend span{display:inline-block;width:12px;height:12px;
margin:0 4px 0 10px;vertical-align:middle}#selfcheck{color:#777;font-size:12px}
"""

# Runs in the browser: every section must have rendered and every chart must have sane
# geometry; problems go to console.error (the headless-browser test fails on them).
CHECK_JS = """
(function(){
  var problems=[];
  var ids=%s;
  ids.forEach(function(id){
    var s=document.getElementById(id);
    if(!s||!s.querySelector('h2')){problems.push('missing section '+id);}
  });
  document.querySelectorAll('svg rect, svg line').forEach(function(el){
    ['x','y','width','height','x1','x2','y1','y2'].forEach(function(a){
      var v=el.getAttribute(a);
      if(v!==null&&!isFinite(parseFloat(v))){problems.push('bad '+a+' in chart');}
    });
  });
  problems.forEach(function(p){console.error('report check: '+p);});
  var out=document.getElementById('selfcheck');
  out.textContent=problems.length?('check failed: '+problems.join('; ')):'check ok';
  document.body.setAttribute('data-check',problems.length?'failed':'ok');
})();
"""


def render_report(store: Store, *, title: str | None = None) -> str:
    """The whole report as one HTML string."""
    from corpus.version import code_version

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = []
    with store.connection():  # one connection for all queries (a second or so at most)
        for sid, heading in SECTIONS:
            try:
                content = BUILDERS[sid](store)
            except Exception as exc:  # one broken section must not hide the others
                if os.environ.get("SELFEVO_DEBUG"):
                    raise
                content = f'<p class="error">could not build this section: {esc(exc)}</p>'
            body.append(f'<section id="{sid}"><h2>{esc(heading)}</h2>{content}</section>')
    nav = "".join(f'<a href="#{sid}">{esc(h)}</a>' for sid, h in SECTIONS)
    title = title or f"selfevo report — {store.path.name}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>store {esc(store.path)} · generated {esc(now)} · "
        f"selfevo {esc(code_version())}</p></header><nav>{nav}</nav><main>{''.join(body)}"
        '<p id="selfcheck">check not run</p></main>'
        f"<script>{CHECK_JS % json.dumps([s for s, _ in SECTIONS])}</script></body></html>\n"
    )


def write_report(db: str, out: str | Path) -> Path:
    """Render the store at ``db`` to ``out`` (read-only; works while a job runs)."""
    from corpus.store import Store

    out = Path(out)
    with Store.open_readonly(db) as store:
        text = render_report(store)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
