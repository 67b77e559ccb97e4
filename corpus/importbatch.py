"""Validating a batch of import rows column by column: the fast path of a streaming import.

The per-row path (``corpus.importers._prompt_fields`` / ``_record_fields`` through pydantic's
``PromptIn`` / ``RecordIn``) is the reference: it decides what is valid and words every
error. This module only *accepts* a batch it can prove the reference would accept unchanged,
and builds exactly the rows the reference would build: each check runs over a whole column
(types, required values, enums, ranges, one UTF-8 encode of all text), gold answers are
canonicalised once per distinct value, ids are hashed from hand-built canonical JSON.
Anything unusual (a wrong type, a bad value, a surrogate, a preset) returns ``None`` and the
caller runs the reference on that batch, which yields the exact ``line N: field …`` error or
the rows. ``tests/test_import_stream.py`` checks on generated batches that both paths give
identical tables.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter, methodcaller
from typing import Any

import pyarrow as pa

from corpus.records import PROMPT_COLUMNS, RECORD_COLUMNS
from schemas.identity import canonical_json_tree, prompt_ids, record_ids
from schemas.numbers import canonical_answer
from schemas.records import MAX_DEPTH, MAX_ROUND, PromptIn, RecordIn, check_json_value

MISSING: Any = object()  # a key the row does not have (unlike an explicit null)
KINDS = frozenset(("meta", "self", "qa"))
VERDICTS = frozenset(("correct", "incorrect"))


class Reject(Exception):
    """The fast path cannot vouch for this batch; the reference path must read it."""


Columns = dict[str, list[Any]]  # key -> one value per row, MISSING where a row lacks the key


def row_columns(rows: Sequence[dict[str, Any]]) -> Columns:
    """The rows of a batch as columns: every key any row has, MISSING where a row lacks it."""
    if rows and len(rows[0]) > 1:
        first = rows[0].keys()
        if all(r.keys() == first for r in rows):  # the usual file: one set of keys, in C
            return dict(zip(first, map(list, zip(*map(itemgetter(*first), rows), strict=True)),
                            strict=True))
    # keys in first-seen order; each column one C-level map of dict.get over the rows
    return {k: list(map(methodcaller("get", k, MISSING), rows))
            for k in dict.fromkeys(chain.from_iterable(rows))}


def arrow_columns(batch: pa.RecordBatch | pa.Table) -> Columns:
    """A batch read by Arrow as columns (each value as its ``to_pylist`` row would hold it)."""
    return {name: col.to_pylist() for name, col in zip(batch.column_names, batch.columns,
                                                        strict=True)}


def _column(cols: Columns, key: str, n: int) -> list[Any]:
    return cols.get(key) or [MISSING] * n


# The checks below run over whole columns in C (set(map(type, …)), min, max, set
# inclusion, str.join) rather than a Python expression per value.
_TEXT = frozenset((str,))
_OPTIONAL_TEXT = frozenset((str, type(None)))


def _present(values: list[Any], default: Any = None) -> list[Any]:
    """``values`` with MISSING replaced by ``default``."""
    if MISSING not in values:
        return values
    return [default if v is MISSING else v for v in values]


def _only(values: list[Any], types: frozenset[type]) -> None:
    """Reject unless every value's type is one of ``types`` (exactly: no subclass)."""
    if not set(map(type, values)) <= types:
        raise Reject


def _optional_text(values: list[Any]) -> list[str | None]:
    """``None`` for absent or null; every other value must be a ``str`` (not a subclass)."""
    out = _present(values)
    _only(out, _OPTIONAL_TEXT)
    return out


def _required_text(values: list[Any]) -> list[str]:
    """Every value a non-empty ``str``."""
    _only(values, _TEXT)
    if not all(values):
        raise Reject
    return values


def _one_of(values: list[Any], allowed: frozenset[str], optional: bool = False) -> list[Any]:
    """Every value one of ``allowed`` (or None when ``optional``; MISSING reads as None)."""
    out = _present(values) if optional else values
    _only(out, _OPTIONAL_TEXT if optional else _TEXT)
    if not set(out) - {None} <= allowed or (not optional and None in out):
        raise Reject
    return out


def _encodable(*columns: list[Any]) -> None:
    """Every text of the columns has a UTF-8 spelling (no lone surrogate): one encode each."""
    try:
        for col in columns:
            try:
                "\x00".join(filter(None, col)).encode("utf-8")
            except TypeError:  # not only texts and None: the texts alone
                "\x00".join(v for v in col if type(v) is str).encode("utf-8")
    except UnicodeEncodeError:
        raise Reject from None


def _gold(values: list[Any]) -> list[str | None]:
    """Canonical gold answers, each distinct text canonicalised once."""
    cache: dict[str, str] = {}
    out: list[str | None] = []
    for v in values:
        if v is MISSING or v is None:
            out.append(None)
            continue
        if type(v) is not str:
            raise Reject  # numbers: the reference reads them (rare in files of text)
        g = cache.get(v)
        if g is None:
            try:
                g = cache[v] = canonical_answer(v)
            except ValueError:
                raise Reject from None
        out.append(g)
    return out


def _json_dict(v: Any) -> dict[str, Any] | None:
    """A meta/templates value as the reference reads it (JSON text is parsed), or Reject."""
    if v is MISSING or v is None:
        return None
    if type(v) is str and v.strip().startswith("{"):
        try:
            v = json.loads(v)
        except (json.JSONDecodeError, RecursionError):
            raise Reject from None
    if type(v) is not dict:
        raise Reject
    return v


def _canonical(value: dict[str, Any] | None, name: str) -> str | None:
    """``canonical_json(value)`` of a value ``check_json_value`` accepts, or Reject.

    One ``json.dumps`` does most of the check: it refuses NaN and infinities
    (``allow_nan=False``) and every non-JSON type, and a lone surrogate, kept raw by
    ``ensure_ascii=False``, fails the batch's one UTF-8 encode (:func:`_encodable`). What it
    lets through that the walk refuses is a non-``str`` key (written as text) and depth, so
    only a flat object with ``str`` keys and few brackets skips the exact walk.
    """
    if value is None:
        return None
    try:
        text = canonical_json_tree(value)
    except (TypeError, ValueError, RecursionError):
        raise Reject from None
    if text.count("{") > 1 or text.count("[") >= MAX_DEPTH or not all(
            isinstance(k, str) for k in value):
        try:
            check_json_value(value, name)
        except ValueError:
            raise Reject from None
    return text


def _table(columns: dict[str, list[Any]], names: list[str], run_id: str) -> pa.Table:
    n = len(columns[names[0]])
    types = {c: pa.int32() if c == "round" else pa.string() for c in names}
    try:
        arrays = [pa.array(columns.get(c, [None] * n), type=types[c]) for c in names]
    except (pa.ArrowException, UnicodeEncodeError, OverflowError):
        raise Reject from None
    arrays.append(pa.array([run_id] * n, type=pa.string()))
    return pa.Table.from_arrays(arrays, names=[*names, "run_id"])


def _or(first: str | None, values: list[Any], default: Callable[[int], Any]) -> list[Any]:
    """``first or value or default`` per row, as the reference spells source and split."""
    out = []
    for i, v in enumerate(values):
        out.append(first or (None if v is MISSING else v) or default(i))
    return out


def fast_prompts(rows: Sequence[dict[str, Any]], *, source: str | None, split: str | None,
                 default_source: str, run_id: str) -> pa.Table:
    """The prompt rows of a batch (already ``--map``-ped, no preset), or raise Reject."""
    return fast_prompt_columns(row_columns(rows), len(rows), source=source, split=split,
                               default_source=default_source, run_id=run_id)


def _metas(cols: Columns, n: int, extra: list[str]) -> list[dict[str, Any] | None]:
    """Each row's meta object, with the unmapped columns ``extra`` merged in (as the
    reference keeps them); Reject when a meta is not an object."""
    metas = [_json_dict(v) for v in _column(cols, "meta", n)]
    for k in extra:
        for i, v in enumerate(cols[k]):
            if v is not MISSING:
                metas[i] = {**(metas[i] or {}), k: v}
    return metas


def fast_prompt_columns(cols: Columns, n: int, *, source: str | None, split: str | None,
                        default_source: str, run_id: str) -> pa.Table:
    """:func:`fast_prompts` of a batch given as columns (:func:`row_columns`,
    :func:`arrow_columns`) of ``n`` rows."""
    extra = [k for k in cols if k not in PromptIn.model_fields and k != "__split__"]
    text = _required_text(_column(cols, "text", n))
    raw_gold = _column(cols, "gold_answer", n)
    gold = _gold(raw_gold)
    rationale = _optional_text(_column(cols, "gold_rationale", n))
    default_split = _column(cols, "__split__", n)
    srcs = _or(source, _column(cols, "source", n), lambda i: default_source)
    splits = _or(split, _column(cols, "split", n),
                 lambda i: None if default_split[i] is MISSING else default_split[i])
    _optional_text(srcs), _optional_text(splits)
    # make_prompt stores an empty meta as NULL
    metas = [_canonical(m, "meta") if m else None for m in _metas(cols, n, extra)]
    _encodable(text, raw_gold, gold, rationale, srcs, splits, metas)
    columns = {"prompt_id": prompt_ids(text), "text": text, "gold_answer": gold,
               "gold_rationale": rationale, "source": srcs, "split": splits, "meta": metas}
    return _table(columns, PROMPT_COLUMNS, run_id)


_RECORD_KEYS = frozenset(RecordIn.model_fields) | {
    "responder", "teacher", "templates", "parent_record_id", "__split__", "record_id",
    "prompt_id", "run_id", "messages", "response_call_id", "feedback_call_id",
    "refinement_call_id", "created_at", "verdict_error"}


def _rounds(values: list[Any]) -> list[int]:
    out = _present(values, 0)
    _only(out, frozenset((int,)))
    if out and not (min(out) >= 0 and max(out) <= MAX_ROUND):
        raise Reject
    return out


def fast_records(rows: Sequence[dict[str, Any]], *, source: str | None, default_source: str,
                 run_id: str) -> tuple[pa.Table, pa.Table]:
    """(prompts, records) of a batch of records rows (already ``--map``-ped), or Reject.

    Prompts are one per distinct text, the first row's gold answer and source.
    """
    return fast_record_columns(row_columns(rows), len(rows), source=source,
                               default_source=default_source, run_id=run_id)


def fast_record_columns(cols: Columns, n: int, *, source: str | None, default_source: str,
                        run_id: str) -> tuple[pa.Table, pa.Table]:
    """:func:`fast_records` of a batch given as columns of ``n`` rows."""
    if not cols.keys() <= _RECORD_KEYS:
        raise Reject
    prompt = _required_text(_column(cols, "prompt", n))
    kind = _one_of(_column(cols, "kind", n), KINDS)
    verdict = _one_of(_column(cols, "verdict", n), VERDICTS, optional=True)
    texts = {c: _optional_text(_column(cols, c, n)) for c in (
        "response", "feedback", "refinement", "responder", "teacher", "parent_record_id")}
    rounds = _rounds(_column(cols, "round", n))
    raw_gold = _column(cols, "gold_answer", n)
    gold = _gold(raw_gold)
    row_src = [source] * n if source else _optional_text(_column(cols, "source", n))
    src = [s or default_source for s in row_src]
    metas = [_canonical(m, "meta") for m in _metas(cols, n, [])]
    templates = [_canonical(_json_dict(t), "templates") for t in _column(cols, "templates", n)]
    _encodable(prompt, raw_gold, gold, row_src, metas, templates, *texts.values())
    pids = prompt_ids(prompt)
    first: dict[str, int] = {}
    for i, pid in enumerate(pids):
        first.setdefault(pid, i)
    at = list(first.values())
    prompts = _table({"prompt_id": [pids[i] for i in at], "text": [prompt[i] for i in at],
                      "gold_answer": [gold[i] for i in at], "source": [src[i] for i in at]},
                     PROMPT_COLUMNS, run_id)
    columns = {
        "record_id": record_ids(pids, kind, rounds, texts["response"], texts["feedback"],
                                verdict, texts["refinement"], texts["parent_record_id"]),
        "prompt_id": pids, "kind": kind, "round": rounds, "verdict": verdict, "source": src,
        "meta": metas, "templates": templates, **texts,
    }
    return prompts, _table(columns, RECORD_COLUMNS, run_id)
