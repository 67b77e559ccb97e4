"""Import presets for the math benchmarks: GSM8K and SVAMP.

A preset turns one raw row of the benchmark's own file into our prompt fields. The same
parsers serve ``selfevo prompts import --preset …`` and the evaluation code
(:func:`load_benchmark_items`), so a benchmark answer means the same thing everywhere.

GSM8K (``{"question", "answer"}``; the answer is a worked solution ending ``#### 18``):

* ``text`` = question; ``gold_answer`` = the number after ``####`` with thousands commas
  removed (``1,080`` → ``1080``), canonical (:func:`schemas.numbers.canonical_answer`);
* ``gold_rationale`` = the full answer text, *without* the calculator annotations
  ``<<16-3-4=9>>``. They are a tool-call artefact of GSM8K's collection, not reasoning; the
  rationale is used as the reference refinement r̂, and a student trained on it would learn to
  emit ``<<…>>`` it has no calculator for.
* ``meta`` = ``{"annotated_rationale": <the answer text with its annotations>}`` when it has
  any: the annotations are the exact computation of each line, which the ``verifying``
  teacher re-derives the solution from (``generation/teachers/derivation.py``).

SVAMP (a JSON array of ``{"ID", "Body", "Question", "Equation", "Answer", "Type"}``):

* ``text`` = Body + " " + Question; ``gold_answer`` = Answer canonical (``27.0`` → ``27``);
  ``meta`` = ``{"id", "equation", "type"}``; no rationale (SVAMP has none).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corpus.errors import CorpusError
from schemas.numbers import canonical_answer

CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")


def strip_calculator_annotations(text: str) -> str:
    """Remove GSM8K's ``<<a*b=c>>`` calculator annotations."""
    return CALCULATOR_ANNOTATION.sub("", text)


def parse_gsm8k_answer(answer: str) -> tuple[str, str]:
    """``(gold_answer, gold_rationale)`` of a GSM8K answer text ending in ``#### N``."""
    if "####" not in answer:
        raise ValueError("no '#### <answer>' line in the answer")
    final = answer.rsplit("####", 1)[1].strip()
    if not final:
        raise ValueError("nothing after '####'")
    return canonical_answer(final), strip_calculator_annotations(answer).strip()


def _text(row: dict[str, Any], field: str) -> str:
    value = row.get(field)
    if value is None:
        raise KeyError(field)
    if not isinstance(value, str):
        raise TypeError(f"field '{field}' must be text, got {type(value).__name__}")
    return value


def gsm8k_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """Prompt fields of one GSM8K row."""
    answer = _text(row, "answer")
    gold, rationale = parse_gsm8k_answer(answer)
    fields: dict[str, Any] = {"text": _text(row, "question"), "gold_answer": gold,
                              "gold_rationale": rationale}
    if CALCULATOR_ANNOTATION.search(answer):
        fields["meta"] = {"annotated_rationale": answer.strip()}
    return fields


def svamp_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """Prompt fields of one SVAMP item."""
    body, question = _text(row, "Body").strip(), _text(row, "Question").strip()
    if "Answer" not in row or row["Answer"] is None:
        raise KeyError("Answer")
    meta = {k.lower(): row[k] for k in ("ID", "Equation", "Type") if row.get(k) is not None}
    return {"text": f"{body} {question}", "gold_answer": canonical_answer(row["Answer"]),
            "meta": meta or None}


@dataclass(frozen=True)
class Preset:
    """How to read one benchmark's rows."""

    name: str
    fields: tuple[str, ...]  # the raw fields it reads (named in error messages)
    to_prompt: Callable[[dict[str, Any]], dict[str, Any]]
    default_split: Callable[[Path], str | None]

    def item_id(self, row: dict[str, Any], index: int, path: Path) -> str:
        """Stable benchmark item id: SVAMP's ``ID``, else ``<file stem>-<0-based index>``."""
        if self.name == "svamp" and row.get("ID"):
            return str(row["ID"])
        return f"{path.stem}-{index}"


def _stem_split(path: Path) -> str | None:
    stem = path.stem.lower()
    return stem if stem in {"train", "test", "validation", "dev"} else None


PRESETS: dict[str, Preset] = {
    "gsm8k": Preset("gsm8k", ("question", "answer"), gsm8k_prompt, _stem_split),
    "svamp": Preset("svamp", ("Body", "Question", "Answer"), svamp_prompt, lambda _p: "test"),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` or a CorpusError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise CorpusError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def load_benchmark_items(path: str | Path, preset: str) -> list[dict[str, Any]]:
    """Read a benchmark file (GSM8K ``test.jsonl``, ``SVAMP.json`` …) into evaluation items.

    Each item: ``item_id``, ``prompt_id``, ``text``, ``gold_answer``, ``gold_rationale``,
    ``source`` (the preset name), ``split``, ``meta``. Bad rows raise a CorpusError naming
    file, line and field, like ``prompts import``.
    """
    from corpus.importers import read_preset_rows  # importers imports this module
    from schemas.identity import prompt_id

    p = get_preset(preset)
    items = []
    for index, fields in enumerate(read_preset_rows(Path(path), p)):
        items.append({
            "item_id": p.item_id(fields.pop("_raw"), index, Path(path)),
            "prompt_id": prompt_id(fields["text"]),
            "text": fields["text"],
            "gold_answer": fields.get("gold_answer"),
            "gold_rationale": fields.get("gold_rationale"),
            "source": p.name,
            "split": fields.get("split"),
            "meta": fields.get("meta"),
        })
    return items


#: Environment variable naming the folder that holds benchmark data (``gsm8k/test.jsonl``,
#: ``svamp/SVAMP.json``); when set, it is the only place looked.
DATA_ENV = "SELFEVO_DATA"
#: The test file of each benchmark, relative to a data folder.
BENCHMARK_FILES = {"gsm8k": ("gsm8k", "test.jsonl"), "svamp": ("svamp", "SVAMP.json")}


def data_dirs() -> list[Path]:
    """The folders searched for benchmark data, in order.

    ``$SELFEVO_DATA`` alone when it is set; otherwise ``shared/data`` in each folder above the
    selfevo checkout, nearest first (``../shared/data`` next to a checkout, and next to the
    folder holding a git worktree), then the same above the current directory.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return [Path(env)]
    checkout = Path(__file__).resolve().parents[1]
    out: list[Path] = []
    for start in (checkout, Path.cwd().resolve()):
        for folder in start.parents:
            if folder / "shared" / "data" not in out:
                out.append(folder / "shared" / "data")
    return out


def find_data_file(*parts: str, path: str | Path | None = None) -> Path | None:
    """The benchmark file ``parts`` (e.g. ``"gsm8k", "test.jsonl"``): ``path`` when given
    (the caller's explicit choice, returned as is), else the first :func:`data_dirs` folder
    that has it, else None."""
    if path is not None:
        return Path(path)
    return next((d.joinpath(*parts) for d in data_dirs() if d.joinpath(*parts).is_file()), None)


def benchmark_file(name: str, path: str | Path | None = None) -> Path | None:
    """The test file of benchmark ``name`` (``gsm8k`` or ``svamp``); see :func:`find_data_file`."""
    return find_data_file(*BENCHMARK_FILES[name], path=path)


def data_lookup_hint() -> str:
    """Where benchmark files were looked for, for an error message."""
    env = os.environ.get(DATA_ENV)
    if env:
        return f"looked in ${DATA_ENV}={env}"
    return f"looked for shared/data above the checkout and the current directory; set {DATA_ENV}"


def require_data_file(*parts: str) -> Path:
    """:func:`find_data_file`, or a CorpusError saying where it looked."""
    found = find_data_file(*parts)
    if found is None:
        raise CorpusError(f"benchmark data {'/'.join(parts)} not found ({data_lookup_hint()})")
    return found
