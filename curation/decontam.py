"""Benchmark decontamination: flag records whose text overlaps a benchmark item's n-grams.

Text is normalised before n-grams are taken, so cosmetic edits do not hide a leaked test
question (:func:`normalise_tokens`):

* Unicode NFKC (full-width digits, ligatures, non-breaking spaces) and ``casefold``;
* every number — digits with ``,`` / ``.`` / ``/`` inside (``1,200``, ``3.5``, ``3/4``) and
  the number words ``zero`` … ``ninety``, ``hundred``, ``thousand``, ``million``, ``dozen``
  — becomes the one token ``0``, and a run of number tokens collapses to one (``twenty
  five`` = ``25``): a test question with its numbers re-worded or changed still matches;
* punctuation and symbols are dropped (tokens are runs of letters and digits), so
  whitespace, quotes, ``$`` and line breaks do not matter.

The benchmark's n-grams go into a hash index (n-gram → items). A record's score is the
largest share of one benchmark item's distinct n-grams that the record contains
(*coverage*); it is flagged when coverage ≥ ``min_overlap``. Coverage, unlike "any shared
n-gram", ignores the stock phrases every word problem shares ("how much money does she
have left") and still catches a test question embedded in a longer prompt. The defaults
(n = 8, min_overlap = 0.5) were chosen by measurement: see docs/curate.md.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corpus.decisions import insert_decisions
from corpus.store import Store
from curation.errors import CurationError
from curation.selection import Selection, count_selected, iter_selected

if TYPE_CHECKING:
    from corpus.display import Tracker

DEFAULT_NGRAM = 8
DEFAULT_MIN_OVERLAP = 0.5
#: Benchmark names accepted by ``--against`` (anything else is a file path).
BENCHMARKS = {"gsm8k-test": "gsm8k", "svamp": "svamp"}
FIELDS = ("prompt", "response", "feedback", "refinement")

_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
    "eighty ninety hundred thousand million billion dozen".split()
)
# A number with inner separators: 1,200 3.5 3/4 1.000,5 — one token, whatever its value.
_DIGITS = re.compile(r"\d+(?:[.,/]\d+)*")
# Letters and digits of any script; "_" and punctuation separate tokens.
_TOKEN = re.compile(r"[^\W_]+")
NUM = "0"


def normalise_tokens(text: str) -> list[str]:
    """The normalised tokens of ``text`` (see the module doc)."""
    text = _DIGITS.sub(" 0 ", unicodedata.normalize("NFKC", text).casefold())
    out: list[str] = []
    for tok in _TOKEN.findall(text):
        if tok in _NUMBER_WORDS or tok == NUM:
            if out and out[-1] == NUM:
                continue  # "twenty five", "1,000 000": one number
            tok = NUM
        out.append(tok)
    return out


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """The distinct n-grams of a token list (the whole list when shorter than n)."""
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return set(zip(*(tokens[i:] for i in range(n)), strict=False))


@dataclass
class BenchmarkIndex:
    """Hash index of a benchmark's n-grams: n-gram → ids of the items that contain it."""

    name: str
    n: int
    item_ids: list[str] = field(default_factory=list)
    item_sizes: list[int] = field(default_factory=list)  # distinct n-grams per item
    grams: dict[tuple[str, ...], list[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, name: str, items: Iterable[tuple[str, str]], n: int) -> BenchmarkIndex:
        """Index ``(item_id, text)`` pairs."""
        if n < 2:
            raise CurationError(f"--ngram {n} is too small; use 5 or more (default "
                                f"{DEFAULT_NGRAM})")
        index = cls(name, n)
        for item_id, text in items:
            grams = ngrams(normalise_tokens(text), n)
            if not grams:
                continue
            k = len(index.item_ids)
            index.item_ids.append(item_id)
            index.item_sizes.append(len(grams))
            for g in grams:
                index.grams.setdefault(g, []).append(k)
        return index

    def match(self, text: str | None) -> tuple[float, dict[str, Any] | None]:
        """Best coverage of one benchmark item by ``text`` and its detail (None: no overlap)."""
        if not text:
            return 0.0, None
        index = self.grams
        # Iterate the record's few n-grams; set.intersection(dict) would walk the whole index.
        hits = [g for g in ngrams(normalise_tokens(text), self.n) if g in index]
        if not hits:
            return 0.0, None
        counts: Counter[int] = Counter()
        for g in hits:
            counts.update(self.grams[g])
        best, shared = max(counts.items(),
                           key=lambda kv: (kv[1] / self.item_sizes[kv[0]], -kv[0]))
        coverage = shared / self.item_sizes[best]
        example = min(g for g in hits if best in self.grams[g])
        return coverage, {"item_id": self.item_ids[best], "ngram": " ".join(example),
                          "shared_ngrams": shared, "item_ngrams": self.item_sizes[best]}


def load_benchmark(against: str, path: str | None) -> tuple[str, list[tuple[str, str]], str]:
    """``(name, [(item_id, text)], sha256)`` of the benchmark named by ``--against``.

    ``gsm8k-test`` and ``svamp`` need ``path`` (their file, read with the import presets so
    item ids match ``eval``); any other value is itself a file (see :func:`read_items`).
    """
    from schemas.identity import file_sha256

    if against in BENCHMARKS:
        if not path:
            example = "gsm8k/test.jsonl" if against == "gsm8k-test" else "svamp/SVAMP.json"
            raise CurationError(f"--against {against} needs --path to its file, e.g. "
                                f"--path data/{example}")
        name = against
    else:
        path, name = path or against, Path(path or against).stem
    if not Path(path).is_file():
        raise CurationError(f"benchmark file {path} not found")
    if against in BENCHMARKS:
        from corpus.presets import load_benchmark_items

        items = [(it["item_id"], it["text"])
                 for it in load_benchmark_items(path, BENCHMARKS[against])]
    else:
        items = read_items(Path(path))
    return name, items, file_sha256(str(path))


_TEXT_KEYS = ("question", "text", "prompt", "problem")
_ID_KEYS = ("id", "ID", "item_id", "idx")


def read_items(path: Path) -> list[tuple[str, str]]:
    """``(item_id, text)`` of a JSONL file or JSON array of benchmark items.

    The text is the first of ``question``, ``text``, ``prompt``, ``problem`` (or SVAMP's
    ``Body`` + ``Question``); the id is ``id`` / ``ID`` / ``item_id`` or ``<stem>-<index>``.
    """
    raw = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            rows = [(i + 1, r) for i, r in enumerate(json.loads(raw))]
        else:
            rows = [(i + 1, json.loads(line)) for i, line in enumerate(raw.splitlines())
                    if line.strip()]
    except (ValueError, TypeError) as exc:
        raise CurationError(f"{path}: not JSONL or a JSON array of objects: {exc}") from None
    items = []
    for line, row in rows:
        if not isinstance(row, dict):
            raise CurationError(f"{path}: item {line} is not a JSON object")
        if "Body" in row and "Question" in row:
            text = f"{row['Body']} {row['Question']}"
        else:
            key = next((k for k in _TEXT_KEYS if isinstance(row.get(k), str)), None)
            if key is None:
                raise CurationError(f"{path}: item {line} has none of the text fields "
                                    f"{', '.join(_TEXT_KEYS)} (it has: {', '.join(row)})")
            text = row[key]
        id_key = next((k for k in _ID_KEYS if row.get(k) is not None), None)
        items.append((str(row[id_key]) if id_key else f"{path.stem}-{line - 1}", text))
    return items


@dataclass
class DecontamRun:
    """What a ``curate decontam`` run did."""

    run_id: str
    step: str
    selected: int
    flagged: int
    index_seconds: float
    match_seconds: float


def decontaminate(
    store: Store,
    index: BenchmarkIndex,
    selection: Selection,
    *,
    fields: Sequence[str] = ("prompt",),
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    source: dict[str, Any] | None = None,
    chunk_size: int = 50_000,
    index_seconds: float = 0.0,
    progress: Tracker | None = None,
    parent_run_id: str | None = None,
) -> DecontamRun:
    """Write one ``decontam-<benchmark>`` decision per selected record (passed = clean).

    The score is the best coverage over ``fields``; the detail names the field, benchmark
    item id, one shared n-gram and the counts. ``progress`` (a ``corpus.display`` tracker)
    counts the records checked.
    """
    bad = [f for f in fields if f not in FIELDS]
    if bad or not fields:
        raise CurationError(f"--field {', '.join(bad)} is not one of {', '.join(FIELDS)}")
    if not 0 < min_overlap <= 1:
        raise CurationError(f"--min-overlap {min_overlap} must be in (0, 1]")
    step = f"decontam-{index.name}"
    params = {"against": index.name, "ngram": index.n, "min_overlap": min_overlap,
              "fields": list(fields), **(source or {})}
    selected = count_selected(store, selection)
    config = {"steps": [{"step": step, "filter": "decontam", "params": params}],
              "selection": selection.as_dict(), "index": {"items": len(index.item_ids),
                                                           "ngrams": len(index.grams)}}
    flagged, seconds = 0, 0.0
    if progress is not None:
        progress.update(total=selected, force=True)
    with store.run("curate decontam", config, parent_run_id) as run:
        for chunk in iter_selected(store, selection, fields, chunk_size):
            t0 = time.perf_counter()
            rows = [_decide(index, rec, fields, min_overlap) for rec in chunk]
            seconds += time.perf_counter() - t0
            store.transact(lambda con, rows=rows: insert_decisions(
                con, rows, run_id=run.run_id, step=step, params=params))
            flagged += sum(not r["passed"] for r in rows)
            run.add("records", len(chunk))
            if progress is not None:
                progress.advance(len(chunk))
                progress.update(info=f"{flagged:,} flagged")
        run.counts.update(selected=selected, flagged=flagged,
                          seconds={step: round(seconds + index_seconds, 4)},
                          index_seconds=round(index_seconds, 4))
    return DecontamRun(run.run_id, step, selected, flagged, index_seconds, seconds)


def _decide(index: BenchmarkIndex, rec: dict[str, Any], fields: Sequence[str],
            min_overlap: float) -> dict[str, Any]:
    best, detail, where = 0.0, None, None
    for f in fields:
        coverage, d = index.match(rec.get(f))
        if d is not None and coverage > best:
            best, detail, where = coverage, d, f
    if detail is None:
        return {"record_id": rec["record_id"], "passed": True, "score": 0.0,
                "reason": f"no {index.n}-gram shared with {index.name}"}
    detail["field"] = where
    detail["benchmark"] = index.name
    passed = best < min_overlap
    verb = "shares" if passed else "contaminated:"
    return {"record_id": rec["record_id"], "passed": passed, "score": round(best, 4),
            "reason": f"{verb} {best:.0%} of {index.name} item {detail['item_id']} "
                      f"({where})", "detail": detail}

