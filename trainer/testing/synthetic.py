"""Synthetic meta-skill records and a contract-following export writer (tests, benchmarks).

The real exporter is ``selfevo snapshot export`` (corpus/). This module writes the same
layout — ``manifest.json`` (:class:`schemas.records.SnapshotManifest`), ``README.md`` and
``records.parquet`` / ``records.jsonl`` of :class:`schemas.records.ExportRow` — from plain
dicts, so the trainer can be tested and benchmarked on a machine without the store.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.conversation import CONVERSATION_VERSION, record_messages
from schemas.identity import canonical_json, file_sha256, prompt_id, record_id, selection_hash
from schemas.records import (
    EXPORT_SCHEMA_VERSION,
    ExportRow,
    SnapshotManifest,
    current_training_hash,
)

_ITEMS = ["apples", "books", "pencils", "oranges", "marbles", "cookies", "stickers", "coins"]
_NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana"]


def synthetic_records(n: int, *, seed: int = 0, kinds: tuple[str, ...] = ("meta",)) -> list[dict]:
    """``n`` variable-length arithmetic word-problem records of the given kinds (deterministic).

    Lengths vary on purpose (1 to ~12 reasoning steps) so padding and packing differ.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        steps = rng.randint(1, 12)
        total = rng.randint(1, 20)
        story = [f"{name} has {total} {item}."]
        work = []
        for _ in range(steps):
            k = rng.randint(1, 9)
            story.append(f"Then {name} gets {k} more {item}.")
            work.append(f"{total} + {k} = {total + k}.")
            total += k
        prompt = " ".join(story) + f" How many {item} does {name} have now? (#{i})"
        wrong = total + rng.choice([-2, -1, 1, 3])
        kind = kinds[i % len(kinds)]
        if kind == "qa":
            out.append({"kind": "qa", "prompt": prompt,
                        "response": " ".join(work) + f" The answer is {total}."})
            continue
        correct = rng.random() < 0.3
        answer = total if correct else wrong
        response = " ".join(work[:-1]) + f" The answer is {answer}."
        if correct:
            feedback = "Each step adds the new items correctly.\nVerdict: correct"
        else:
            feedback = f"The final sum is wrong: it should be {total}, not {answer}.\nVerdict: incorrect"
        out.append({
            "kind": kind, "prompt": prompt, "response": response, "feedback": feedback,
            "verdict": "correct" if correct else "incorrect",
            "refinement": " ".join(work) + f" The answer is {total}.",
            "round": 1 if kind == "self" else 0,
        })
    return out


def export_row(rec: dict[str, Any], *, run_id: str = "run-synthetic") -> dict[str, Any]:
    """An ExportRow dict for a simple record dict (ids computed the store's way)."""
    pid = prompt_id(rec["prompt"])
    fields = {k: rec.get(k) for k in ("response", "feedback", "verdict", "refinement")}
    rnd = int(rec.get("round", 0))
    row = {
        "record_id": record_id(prompt_id=pid, kind=rec["kind"], round=rnd, **fields,
                               parent_record_id=None),
        "prompt_id": pid, "kind": rec["kind"], "round": rnd, "prompt": rec["prompt"], **fields,
        "gold_answer": rec.get("gold_answer"), "source": rec.get("source", "synthetic"),
        "parent_record_id": None, "meta": None, "run_id": run_id, "responder": None,
        "teacher": None, "response_call_id": None, "feedback_call_id": None,
        "refinement_call_id": None, "templates": None,
        "messages": record_messages(kind=rec["kind"], prompt=rec["prompt"], **{
            k: fields[k] for k in ("response", "feedback", "refinement")}),
    }
    return ExportRow.model_validate(row).model_dump()


def write_export(out_dir: str | Path, records: list[dict[str, Any]], *, fmt: str = "parquet",
                 name: str = "synthetic") -> Path:
    """Write ``records`` as an export directory following the snapshot export contract."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted((export_row(r) for r in records), key=lambda r: r["record_id"])
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = out / "records.parquet"
        pq.write_table(pa.Table.from_pylist(rows), data)
    elif fmt == "jsonl":
        data = out / "records.jsonl"
        data.write_text("".join(canonical_json(r) + "\n" for r in rows), encoding="utf-8")
    else:
        raise ValueError(f"unsupported format {fmt!r}")
    ids = [r["record_id"] for r in rows]
    counts: dict[str, dict[str, int]] = {
        "kind": dict(Counter(r["kind"] for r in rows)),
        "round": dict(Counter(str(r["round"]) for r in rows)),
        "verdict": dict(Counter(str(r["verdict"]) for r in rows)),
    }
    manifest = SnapshotManifest(
        schema_version=EXPORT_SCHEMA_VERSION, conversation_version=CONVERSATION_VERSION,
        name=name, snapshot_id=f"snap-{name}", content_hash=selection_hash(ids),
        training_hash=current_training_hash(selection_hash(ids)), parent=None,
        selection={"where": "true", "base": None, "note": "synthetic"}, format=fmt, n=len(rows),
        counts=counts,
        files=[{"path": data.name, "rows": len(rows), "bytes": data.stat().st_size,
                "sha256": file_sha256(str(data))}],
        runs=["run-synthetic"], code_version="synthetic",
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    (out / "manifest.json").write_text(
        json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(f"# {name}\n\nSynthetic export ({len(rows)} records).\n")
    return out
