"""The HTML audit report: sections and values from fixture rows, escaping, empty store, browser."""

from __future__ import annotations

import html.parser
import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from backends import both_stores, writing

from corpus.decisions import insert_decisions
from corpus.records import insert_prompts, insert_records, make_prompt, make_record
from corpus.store import Store
from selfevo.report import SECTIONS, render_report, write_report

EVIL = "<script>alert('x')</script>"


def build_fixture_store(db: str) -> dict[str, str]:
    """A store with prompts, records, decisions, calls, a model and evals; returns ids."""
    prompts = [
        make_prompt("Ann has 2 apples and gets 3 more. How many?", gold_answer="5",
                    source="generated", split="train"),
        make_prompt("Bo has 10 pens and loses 4. How many?", gold_answer="6",
                    source="generated", split="train"),
        make_prompt(f"Evil {EVIL} question: 1 + 1?", gold_answer="2", source="gsm8k",
                    split="train"),
        make_prompt("Held out: 3 + 3?", gold_answer="6", source="generated", split="test"),
    ]
    p = [x["prompt_id"] for x in prompts]
    recs = [
        # reference teacher: verdict agrees with gold on both
        make_record(prompt_id=p[0], kind="meta", response="The answer is 5.",
                    feedback="Right.\nVerdict: correct", verdict="correct",
                    refinement="2 + 3 = 5. The answer is 5.", teacher="reference",
                    source="generated"),
        make_record(prompt_id=p[1], kind="meta", response="The answer is 7.",
                    feedback="Wrong.\nVerdict: incorrect", verdict="incorrect",
                    refinement="10 - 4 = 6. The answer is 6.", teacher="reference",
                    source="generated"),
        # LLM teacher: says correct on the wrong answer (disagrees with gold and reference)
        make_record(prompt_id=p[1], kind="meta", response="The answer is 7.",
                    feedback="Looks fine.\nVerdict: correct", verdict="correct",
                    refinement="The answer is 7.", teacher="openai:gpt-x", source="generated"),
        make_record(prompt_id=p[2], kind="meta", response=f"The answer is 2. {EVIL}",
                    feedback="Fine.\nVerdict: correct", verdict="correct",
                    refinement="The answer is 2.", teacher="openai:gpt-x", source="gsm8k"),
        make_record(prompt_id=p[0], kind="self", round=1, response="It is 5",
                    feedback="x" * 300 + "\nVerdict: correct", verdict="correct",
                    refinement="The answer is 5.", teacher="hf:tiny", source="generated"),
        make_record(prompt_id=p[3], kind="qa", response="The answer is 6."),
    ]
    r = [x["record_id"] for x in recs]
    with Store.open(db) as store:
        with store.run("import", {}) as run:
            with writing(store) as con:
                insert_prompts(con, prompts, run.run_id)
                insert_records(con, recs, run.run_id)
        with store.run("curate filter", {"steps": [{"step": "verdict"}, {"step": "length"}]}
                       ) as run:
            with writing(store) as con:
                insert_decisions(con, [{"record_id": x, "passed": x not in (r[1], r[4])}
                                       for x in r[:5]], run_id=run.run_id, step="verdict")
                insert_decisions(con, [{"record_id": x, "passed": x != r[0],
                                        "reason": f"too long {EVIL}"} for x in r[:5]],
                                 run_id=run.run_id, step="length")
        with store.run("curate dedup", {}) as run:
            with writing(store) as con:
                insert_decisions(con, [
                    {"record_id": r[0], "passed": True, "detail": {"cluster_id": 0,
                                                                   "cluster_size": 3}},
                    {"record_id": r[1], "passed": False, "detail": {"cluster_id": 0,
                                                                    "cluster_size": 3}},
                    {"record_id": r[2], "passed": False, "detail": {"cluster_id": 0,
                                                                    "cluster_size": 3}},
                    {"record_id": r[3], "passed": True, "detail": {"cluster_id": 3,
                                                                   "cluster_size": 1}},
                ], run_id=run.run_id, step="dedup-exact")
        with store.run("curate decontam", {}) as run:
            with writing(store) as con:
                insert_decisions(con, [
                    {"record_id": r[3], "passed": False, "reason": "13-gram overlap",
                     "detail": {"benchmark": "gsm8k-test", "ngram": "janet s ducks lay"}},
                    {"record_id": r[0], "passed": True, "detail": {"benchmark": "gsm8k-test"}},
                ], run_id=run.run_id, step="decontam")
        with writing(store) as con:
            con.execute(
                "INSERT INTO models (model_id, base, path, adapter, snapshot_hash, run_id) "
                "VALUES ('h1:m1', 'tiny', '/ckpt/r1', true, 'h1:snaphash', 'r0')")
            for i, (model, status, pt, ct, cost) in enumerate([
                ("openai:gpt-x", "ok", 1000, 250, 0.0125), ("openai:gpt-x", "ok", 800, 200,
                                                           0.01),
                ("openai:gpt-x", "failed", None, None, None), ("hf:tiny", "ok", 50, 20, None),
            ]):
                con.execute(
                    "INSERT INTO calls (call_id, model, messages, params, status, prompt_tokens,"
                    " completion_tokens, cost, latency, run_id) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [f"c{i}", model, "[]", "{}", status, pt, ct, cost, 0.5, "r0"])
            for eval_id, model, model_id, mode, n, k, lo, hi in [
                ("e1", "hf:tiny", None, "direct", 20, 5, 0.112, 0.469),
                ("e2", "hf:tiny", None, "refine", 20, 6, 0.145, 0.519),
                ("e3", "hf:tiny+/ckpt/r1", "h1:m1", "direct", 20, 9, 0.258, 0.658),
                ("e4", "hf:tiny+/ckpt/r1", "h1:m1", "refine", 20, 11, 0.342, 0.742),
            ]:
                con.execute(
                    "INSERT INTO evals (eval_id, model, model_id, benchmark, mode, n, correct,"
                    " accuracy, ci_low, ci_high, config, run_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [eval_id, model, model_id, "gsm8k", mode, n, k, k / n, lo, hi,
                     '{"round": 1}' if model_id else "{}", "run-" + model[-2:]])
    return {"r0": r[0], "r3": r[3]}


def section(html_text: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', html_text, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


@both_stores
def test_report_sections_and_values(db, tmp_path):
    ids = build_fixture_store(db)
    out = write_report(db, tmp_path / "r" / "report.html")
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    for sid, heading in SECTIONS:
        assert heading in section(text, sid)
    corpus = section(text, "corpus")
    assert 'data-count="records">6<' in corpus and 'data-count="prompts">4<' in corpus
    assert "round 1" in corpus and "generated / test" in corpus
    funnel = section(text, "funnel")
    # 5 records selected; verdict drops 2 (r1, r4), length drops r0 -> 2 remain
    assert "curate filter" in funnel and "selected" in funnel and "after length" in funnel
    assert re.search(r"<td>verdict</td><td class=\"num\">5</td><td class=\"num\">3</td>"
                     r"<td class=\"num\">2</td><td class=\"num\">3</td>", funnel)
    assert re.search(r"<td>length</td><td class=\"num\">5</td><td class=\"num\">4</td>"
                     r"<td class=\"num\">1</td><td class=\"num\">2</td>", funnel)
    agree = section(text, "agreement")
    assert "<td>reference</td><td>meta</td><td class=\"num\">2</td><td>100.0%</td>" in agree
    assert "<td>openai:gpt-x</td><td>meta</td><td class=\"num\">2</td><td>50.0%</td>" in agree
    assert "LLM teacher vs reference" in agree and "<td>0.0%</td>" in agree
    dedup = section(text, "dedup")
    assert "dedup-exact" in dedup and "size 3" in dedup and "(1 singletons)" in dedup
    decontam = section(text, "decontam")
    assert "gsm8k-test" in decontam and ids["r3"] in decontam and "13-gram overlap" in decontam
    acc = section(text, "accuracy")
    assert "25.0% [11.2, 46.9]" in acc and "55.0% [34.2, 74.2]" in acc
    assert "h1:snaphash" in acc and "<svg" in acc and "round 1 · " in acc
    cost = section(text, "cost")
    assert "openai:gpt-x" in cost and "1,800" in cost and "0.0225" in cost
    lengths = section(text, "lengths")
    assert "feedback" in lengths and "n=5" in lengths and "<svg" in lengths


def test_report_escapes_store_text_and_is_self_contained(db, tmp_path):
    build_fixture_store(db)
    text = write_report(db, tmp_path / "report.html").read_text()
    assert EVIL not in text and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in text
    assert text.count("<script>") == 1  # only the page's own check
    # nothing fetched: no external src/href, no stylesheet links, no imports
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "<link" not in text and "@import" not in text


#: Pieces of hostile text: markup, script, template syntax, quotes, entities, comment tricks.
HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>", '{{ "zz" ~ "qq" }}',
           "{% raw %}", "{# c #}", "\"dq\"", "'sq'", "</td></tr></table>", "&amp;", "<!--",
           "]]>", "<svg onload=alert(3)>", "`${x}`", "</style><b>", "\\u003c"]
#: The tags the report itself writes; anything else in the page was injected.
OWN_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "p",
            "nav", "a", "main", "section", "small", "div", "b", "span", "em", "svg", "text",
            "rect", "line", "table", "thead", "tbody", "tr", "th", "td", "script"}


class PageParser(html.parser.HTMLParser):
    """Start tags, their attribute names, and the page's text as a browser would read it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes |= {name for name, _ in attrs}

    def handle_data(self, data):
        self.text.append(data)


def hostile_strings(seed: int, n: int) -> list[str]:
    """``n`` distinct strings, each two or three hostile pieces around a unique marker."""
    rng = random.Random(seed)
    return [f"{rng.choice(HOSTILE)}m{i}{''.join(rng.sample(HOSTILE, rng.randint(1, 2)))}"
            for i in range(n)]


def build_hostile_store(db: str, texts: list[str]) -> dict[str, str]:
    """A store whose every text field the report shows holds one of ``texts``; returns
    field -> the text put there."""
    it = iter(texts)
    put = {f: next(it) for f in ("prompt", "source", "split", "teacher",
                                 "record_source", "step", "reason", "benchmark", "snapshot",
                                 "model", "eval_model", "eval_bench", "command")}
    prompt = make_prompt(put["prompt"], gold_answer="5", source=put["source"],
                         split=put["split"])
    rec = make_record(prompt_id=prompt["prompt_id"], kind="meta", response="The answer is 5.",
                      feedback="ok\nVerdict: correct", verdict="correct", refinement="5",
                      teacher=put["teacher"],
                      source=put["record_source"])
    with Store.open(db) as store:
        with store.run(put["command"], {}) as run, writing(store) as con:
            insert_prompts(con, [prompt], run.run_id)
            insert_records(con, [rec], run.run_id)
            insert_decisions(con, [{"record_id": rec["record_id"], "passed": False,
                                    "reason": put["reason"], "detail": {"cluster_id": 1,
                                                                        "cluster_size": 2}}],
                             run_id=run.run_id, step="dedup-" + put["step"])
            insert_decisions(con, [{"record_id": rec["record_id"], "passed": False,
                                    "reason": put["reason"],
                                    "detail": {"benchmark": put["benchmark"]}}],
                             run_id=run.run_id, step="decontam")
            con.execute("INSERT INTO snapshots (snapshot_id, name, selection, n, content_hash,"
                        " run_id) VALUES ('s1', ?, '{}', 1, 'h1:x', ?)",
                        [put["snapshot"], run.run_id])
            con.execute("INSERT INTO calls (call_id, model, messages, params, status, run_id)"
                        " VALUES ('c1', ?, '[]', '{}', 'ok', ?)", [put["model"], run.run_id])
            con.execute("INSERT INTO evals (eval_id, model, benchmark, mode, n, correct, "
                        "accuracy, ci_low, ci_high, run_id) VALUES ('e1', ?, ?, 'direct', 2, 1,"
                        " 0.5, 0.1, 0.9, ?)", [put["eval_model"], put["eval_bench"], run.run_id])
    return put


@pytest.mark.parametrize("seed", range(4))
def test_hostile_store_text_is_escaped_everywhere(tmp_path, seed):
    """Generated text with markup, script, template syntax and quotes, in every field the
    report shows and in the store's file name: shown as text, never as markup or template."""
    texts = hostile_strings(seed, 14)
    db = str(tmp_path / f"{texts[-1].replace('/', '_')}.duckdb")
    put = build_hostile_store(db, texts)
    with Store.open_readonly(db) as store:
        page = render_report(store)
    parsed = PageParser()
    parsed.feed(page)
    assert set(parsed.tags) <= OWN_TAGS, set(parsed.tags) - OWN_TAGS
    assert parsed.tags.count("script") == 1 and parsed.tags.count("style") == 1
    assert not {a for a in parsed.attributes if a.startswith("on")}
    shown = "".join(parsed.text)
    for field, text in put.items():
        assert text in shown, f"{field}: {text!r} not shown as text"
    assert texts[-1] in shown  # the store's file name, in the title and header
    assert "zzqq" not in shown  # template syntax in the data was never evaluated
    assert "could not build" not in page


def test_a_failing_section_is_reported_in_the_page_or_raised_with_debug(db, tmp_path, cli,
                                                                          monkeypatch):
    build_fixture_store(db)
    with Store.open(db) as store, writing(store) as con:
        con.execute("DROP VIEW records_full")  # the agreement section reads it
    monkeypatch.setenv("SELFEVO_DEBUG", "1")  # the library reads no environment for this
    text = write_report(db, tmp_path / "r.html").read_text()
    assert "could not build this section" in section(text, "agreement")
    assert "records_full" in section(text, "agreement")
    assert "could not build" not in section(text, "funnel")
    with pytest.raises(Exception, match="records_full"):
        write_report(db, tmp_path / "r.html", debug=True)
    monkeypatch.delenv("SELFEVO_DEBUG")
    cli("report", "--out", str(tmp_path / "cli.html"), "--db", db)
    assert "could not build" in (tmp_path / "cli.html").read_text()
    with pytest.raises(Exception, match="records_full"):
        cli("--debug", "report", "--out", str(tmp_path / "cli.html"), "--db", db)


def test_empty_store_report(db, tmp_path, cli):
    with Store.open(db):
        pass
    out = tmp_path / "empty.html"
    res = cli("report", "--out", str(out), "--db", db)
    assert "wrote" in res.output
    text = out.read_text()
    for sid in ("funnel", "dedup", "decontam", "accuracy", "cost"):
        assert 'class="empty"' in section(text, sid), sid
    assert "could not build" not in text
    assert "No responses yet." in section(text, "lengths")


def test_cost_tells_same_named_checkpoints_apart_by_weights(db, tmp_path):
    """Two rounds' adapters are both called 'final': their calls are two rows, by weights."""
    with Store.open(db) as store, writing(store) as con:
        for i, (model, endpoint, tokens) in enumerate([
                ("hf:base+final", "weights:aaaa1111" + "0" * 24, 10),
                ("hf:base+final", "weights:bbbb2222" + "0" * 24, 30),
                ("hf:base", "weights:cccc3333" + "0" * 24, 5),
                ("openai:gpt-x", "https://api.example.com/v1", 7)]):
            con.execute("INSERT INTO calls (call_id, model, endpoint, messages, params, status,"
                        " prompt_tokens, completion_tokens, run_id) VALUES (?,?,?,?,?,?,?,?,?)",
                        [f"c{i}", model, endpoint, "[]", "{}", "ok", tokens, 0, "r0"])
    cost = section(write_report(db, tmp_path / "r.html").read_text(), "cost")
    labels = re.findall(r'<text x="214" y="\d+" text-anchor="end">([^<]*)</text>', cost)
    assert labels == ["hf:base+final (bbbb2222)", "hf:base+final (aaaa1111)", "openai:gpt-x",
                      "hf:base"]
    assert "<td>https://api.example.com/v1</td>" not in cost  # a URL is not a weights id


def test_report_on_missing_store_is_a_user_error(tmp_path, cli):
    res = cli("report", "--out", str(tmp_path / "x.html"), "--db", str(tmp_path / "nope.duckdb"),
              exit_code=1)
    assert "no store" in res.output


def test_report_help_has_example(cli):
    assert "Example:" in cli("report", "--help").output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium offline with console logging on stderr."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
    res = subprocess.run([*flags, *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def console_lines(stderr: str) -> list[str]:
    """Console messages and uncaught errors of the page.

    Headless Chromium logs every console message as ``INFO:CONSOLE`` whatever its level, and
    the report logs nothing unless something is wrong, so any console line is a failure.
    """
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


skip_without_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (apt-get install -y chromium); the headless browser "
           "check needs it")


@pytest.mark.slow
@skip_without_chromium
def test_report_renders_in_headless_chromium(db, tmp_path):
    build_fixture_store(db)
    report = write_report(db, tmp_path / "report.html")
    url = report.resolve().as_uri()
    dom = chromium("--dump-dom", url, profile=tmp_path / "profile")
    assert not console_lines(dom.stderr), console_lines(dom.stderr)
    assert 'data-check="ok"' in dom.stdout, "the page's own check did not pass"
    assert "check ok" in dom.stdout
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,2000", url,
             profile=tmp_path / "profile")
    assert shot.exists() and shot.stat().st_size > 10_000
    keep = os.environ.get("SELFEVO_TEST_ARTIFACTS")  # e.g. CI uploads this folder
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report-screenshot.png")


@pytest.mark.slow
@skip_without_chromium
def test_headless_check_catches_a_broken_page(db, tmp_path):
    """The browser test can fail: a missing section and a NaN chart are reported."""
    build_fixture_store(db)
    report = write_report(db, tmp_path / "report.html")
    broken = report.read_text().replace('<section id="dedup">', '<section id="gone">')
    broken = broken.replace('<rect x="', '<rect x="NaN" data-x="', 1)
    report.write_text(broken)
    dom = chromium("--dump-dom", report.resolve().as_uri(), profile=tmp_path / "profile")
    lines = console_lines(dom.stderr)
    assert any("missing section dedup" in ln for ln in lines), dom.stderr[-2000:]
    assert any("bad x in chart" in ln for ln in lines)
    assert 'data-check="failed"' in dom.stdout


def test_report_from_the_real_curation_commands(cli, db, tmp_path):
    """Decisions written by the actual filter and dedup commands land in the right sections."""
    rows = []
    for i in range(6):
        q = "Sam has 4 pens and buys 3 more. How many pens?" if i < 3 else f"What is {i} + 1?"
        rows.append({"prompt": q, "response": f"The answer is {7 if i < 3 else i + 1}.",
                     "feedback": "Fine.\nVerdict: " + ("incorrect" if i == 4 else "correct"),
                     "verdict": "incorrect" if i == 4 else "correct",
                     "refinement": f"Refined {i}. The answer is {7 if i < 3 else i + 1}.",
                     "kind": "meta", "gold_answer": "7" if i < 3 else str(i + 1)})
    f = tmp_path / "records.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cli("records", "import", str(f), "--db", db)
    cli("curate", "filter", "--step", "verdict", "--db", db)
    cli("curate", "dedup", "--exact", "--db", db)
    text = write_report(db, tmp_path / "report.html").read_text()
    assert "could not build" not in text
    funnel = section(text, "funnel")
    assert "curate filter" in funnel and "curate dedup" in funnel
    assert re.search(r"<td>verdict</td><td class=\"num\">6</td><td class=\"num\">5</td>", funnel)
    dedup = section(text, "dedup")
    assert "dedup-exact" in dedup and "size 3" in dedup and "(3 singletons)" in dedup
    agree = section(text, "agreement")
    assert "<td>meta</td><td class=\"num\">6</td>" in agree


def test_agreement_is_sampled_above_the_limit(db, tmp_path, monkeypatch):
    import selfevo.report as report

    build_fixture_store(db)
    monkeypatch.setattr(report, "AGREEMENT_LIMIT", 3)
    text = write_report(db, tmp_path / "report.html").read_text()
    assert "sample of 3 of 5 labelled records" in section(text, "agreement")


def add_eval(con, eval_id: str, model: str, mode: str, run: str, gold: list[str],
             right: list[bool], verdicts: list[str]) -> None:
    """An evals row and its items (refine items carry the first self-feedback verdict)."""
    con.execute("INSERT INTO evals (eval_id, model, benchmark, mode, n, correct, accuracy,"
                " config, run_id) VALUES (?, ?, 'mini', ?, ?, ?, ?, '{}', ?)",
                [eval_id, model, mode, len(right), sum(right), sum(right) / len(right), run])
    for i, ok in enumerate(right):
        detail: dict = {"answer_call_ids": [f"c{i}" if model == "hf:a" else None]}
        if mode == "refine":
            detail["steps"] = [[{"verdict": verdicts[i]}]]
        con.execute("INSERT INTO eval_items (eval_id, item_id, question, gold, correct, detail)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [eval_id, f"i{i}", f"question {i}", gold[i], ok, json.dumps(detail)])


def test_paired_section_counts_by_hand(db, tmp_path):
    """Five items; A answers 2 right, refining fixes 2 and breaks 1; B answers 4 right.
    Hand-counted: refine vs direct 2 wrong→right, 1 right→wrong, McNemar p = 1 (1 vs 2
    discordant); A vs B 0 only-A, 2 only-B, p = 2 · 0.5² = 0.5; the critic accepts 1 of 2
    right answers (50.0%) and catches 2 of 3 wrong ones (66.7%)."""
    gold = ["1", "2", "3", "4", "5"]
    a_direct = [True, True, False, False, False]
    a_refine = [True, False, True, True, False]
    b_direct = [True, True, True, False, True]
    verdicts = ["correct", "incorrect", "incorrect", "correct", "incorrect"]
    with Store.open(db) as store:
        with writing(store) as con:
            for i, ok in enumerate(a_direct):
                con.execute("INSERT INTO calls (call_id, model, messages, params, status, "
                            "response, run_id) VALUES (?, 'hf:a', '[]', '{}', 'ok', ?, 'r0')",
                            [f"c{i}", f"The answer is {gold[i] if ok else 0}."])
        for eval_id, model, mode, run, right in [("ea1", "hf:a", "direct", "run-a", a_direct),
                                                 ("ea2", "hf:a", "refine", "run-a", a_refine),
                                                 ("eb1", "hf:b", "direct", "run-b", b_direct)]:
            with writing(store) as con:  # one evaluation after the other, as runs do
                add_eval(con, eval_id, model, mode, run, gold, right, verdicts)
    page = section(write_report(db, tmp_path / "report.html").read_text(), "paired")
    cells = re.findall(r"<td[^>]*>(.*?)</td>", page)
    refine_row, neighbour_row = cells[:11], cells[11:]
    assert refine_row == ["hf:a", "mini", "5", "2 (40.0%)", "3 (60.0%)", "2", "1", "1", "1",
                          "50.0%", "66.7%"]
    assert neighbour_row == ["hf:a", "hf:b", "mini", "5", "2 (40.0%)", "4 (80.0%)", "0", "2",
                             "0.5", "0.5"]
