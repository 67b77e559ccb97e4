"""Importing prompts and (p, r, f, r̂) records from files into the store.

Formats: JSONL (one object per line), JSON (an array of objects, e.g. SVAMP.json), CSV
(header row), Parquet, and a directory saved by HF ``datasets`` (``save_to_disk``).

An import is atomic. The whole file is read and validated first, with no store connection
open; the first bad row stops it with a one-line error naming the file, the line (or row)
and the field. Only then are all rows inserted in ONE write transaction under a ``runs``
row, so a failure or a SIGKILL at any point leaves nothing from the file in the store (the
run row is marked failed, or killed by the next writer). Ids are content hashes and inserts
are insert-or-ignore, so importing the same file twice adds nothing.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pydantic import ValidationError

from corpus.errors import CorpusError
from corpus.presets import Preset, get_preset
from corpus.store import Store
from schemas.identity import canonical_json, file_sha256
from schemas.records import MAX_DEPTH, PromptIn, RecordIn

if TYPE_CHECKING:
    from corpus.display import Tracker

PROMPT_FIELDS = tuple(PromptIn.model_fields)  # text, gold_answer, gold_rationale, source, split, meta
RECORD_FIELDS = tuple(RecordIn.model_fields)
# Columns of a snapshot export that are derived (ids, chat layout) or point at rows of
# another store (call ids); `records import` of an export skips them.
EXPORT_ONLY_COLUMNS = {"record_id", "prompt_id", "run_id", "messages", "response_call_id",
                       "feedback_call_id", "refinement_call_id", "created_at", "verdict_error"}
# Provenance columns of an export that are kept when present.
PASSTHROUGH_COLUMNS = {"responder", "teacher", "templates", "parent_record_id"}
FORMATS = ("jsonl", "json", "csv", "parquet", "hf")
PROGRESS_EVERY = 1_000  # rows between two advances of the progress bar while reading
BATCH_ROWS = 10_000  # rows per staged Arrow table and per INSERT
# A prompt may be long, but one cell is never more than this (csv's default is 128 KiB).
csv.field_size_limit(64 * 1024 * 1024)


class ImportInputError(CorpusError):
    """A row of an import file is malformed; the message names file, line and field."""


@dataclass
class ImportResult:
    """What an import read and wrote."""

    path: str
    run_id: str
    rows: int  # rows read from the file
    new_prompts: int = 0  # prompts rows that were not in the store yet
    new_records: int = 0  # records rows that were not in the store yet
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self, what: str) -> str:
        """One line for the CLI, e.g. ``12 prompts read, 0 new (run r…)``."""
        if what == "records":
            return (f"{self.rows} records read from {self.path}: {self.new_records} new records, "
                    f"{self.new_prompts} new prompts (run {self.run_id})")
        return f"{self.rows} prompts read from {self.path}: {self.new_prompts} new (run {self.run_id})"


# -- reading -----------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """The format of ``path`` from its name (a directory is a saved HF dataset)."""
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix in {".json", ".csv", ".parquet"}:
        return suffix[1:]
    raise ImportInputError(
        f"{path}: cannot tell the format from the name; pass --format "
        f"({', '.join(FORMATS)})"
    )


def _utf8_error(path: Path, exc: UnicodeDecodeError, data: bytes, offset: int = 0) -> ImportInputError:
    line = data[: exc.start].count(b"\n") + 1 + offset
    col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return ImportInputError(
        f"{path}: line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {col}); "
        "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
    )


def _loads(path: Path, text: str, where: str) -> Any:
    """``json.loads`` with its failures as one line naming the file and line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = f"line {exc.lineno}" if where == "" else where
        raise ImportInputError(
            f"{path}: {line}: malformed JSON at column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ImportInputError(
            f"{path}: {where or 'line 1'}: JSON nested too deeply to read (the limit for a "
            f"field is {MAX_DEPTH} levels); flatten it") from None


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]  # a BOM is accepted as in CSV and JSON
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8").rstrip("\r\n")  # error columns stay on this line
            except UnicodeDecodeError as exc:
                raise _utf8_error(path, exc, raw, lineno - 1) from None
            obj = _loads(path, line, f"line {lineno}")
            if not isinstance(obj, dict):
                raise ImportInputError(
                    f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            yield f"line {lineno}", obj


def _decode_all(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, exc, data) from None


def _read_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    obj = _loads(path, _decode_all(path), "")
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        raise ImportInputError(f"{path}: expected a JSON array of objects")
    for i, item in enumerate(obj, start=1):
        if not isinstance(item, dict):
            raise ImportInputError(
                f"{path}: item {i}: expected a JSON object, got {type(item).__name__}"
            )
        yield f"item {i}", item


def _read_csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    # strict: a quote left open must not swallow the rest of the file into one cell.
    reader = csv.DictReader(io.StringIO(_decode_all(path), newline=""), strict=True)
    rows = iter(reader)
    while True:
        start = reader.line_num + 1  # the line the next row starts on
        try:
            if reader.line_num == 0:
                reader.fieldnames  # noqa: B018 (reads the header, so `start` is past it)
                start = reader.line_num + 1
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            hint = ("a quoted cell opened here is never closed: close the quote, or double "
                    'a quote inside a quoted cell ("")'
                    if "end of data" in str(exc) or "expected after" in str(exc)
                    else "fix the CSV there")
            raise ImportInputError(f"{path}: line {start}: malformed CSV ({exc}); {hint}") from None
        if None in row:  # more cells than header columns
            raise ImportInputError(
                f"{path}: line {start}: {len(row[None]) + len(reader.fieldnames or [])} "
                f"cells but the header has {len(reader.fieldnames or [])} columns"
            )
        # An empty CSV cell means "no value", not the empty string.
        yield f"line {start}", {k: (v if v != "" else None) for k, v in row.items()}


def _read_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise ImportInputError(f"{path}: not a readable Parquet file ({exc})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=10_000):
        for row in batch.to_pylist():
            n += 1
            yield f"row {n}", row


def _datasets_module() -> Any:
    try:
        import datasets
    except ImportError:
        from schemas.install import install_hint

        raise ImportInputError(
            f"reading HF datasets needs the datasets package: {install_hint('datasets')}"
        ) from None
    return datasets


def _dataset_rows(ds: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    datasets = _datasets_module()
    parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split, part in parts:
        for i, row in enumerate(part, start=1):
            # The split of a DatasetDict is a default for the row's `split` field.
            if split is not None:
                row = {"__split__": split, **row}
            yield (f"split {split} row {i}" if split else f"row {i}"), row


def _read_hf(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    datasets = _datasets_module()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError or its own errors
        raise ImportInputError(
            f"{path}: not a directory written by datasets' save_to_disk ({exc})"
        ) from None
    yield from _dataset_rows(ds)


def read_hub_rows(name: str, split: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of ``datasets.load_dataset(NAME[:CONFIG], split=split)`` (all splits when None).

    NAME is a Hub id (``openai/gsm8k:main``) or a local folder of data files.
    """
    datasets = _datasets_module()
    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as exc:  # network, unknown name or config, missing split …
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImportInputError(
            f"hf:{name}: cannot load the dataset ({first}); check the name, add :CONFIG if it "
            "has several, and that HF_HUB_OFFLINE is not set when it must be downloaded"
        ) from None
    if split is not None:  # the split asked for is also the label
        ds = datasets.DatasetDict({split: ds})
    yield from _dataset_rows(ds)


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv,
           "parquet": _read_parquet, "hf": _read_hf}


def read_rows(path: str | Path, fmt: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, row)`` from a file; ``location`` is ``"line 3"``, ``"row 3"`` …

    Raises ImportInputError (naming file and line) on unreadable input.
    """
    path = Path(path)
    if not path.exists():
        raise ImportInputError(f"{path}: no such file or directory")
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise ImportInputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    yield from READERS[fmt](path)


# -- field mapping and validation ----------------------------------------------------------------


def parse_map(spec: str | None, targets: tuple[str, ...] = PROMPT_FIELDS) -> dict[str, str]:
    """``"question=text,answer=gold_answer"`` → ``{"question": "text", …}``.

    A target may also be ``meta.NAME`` (kept in the meta object under NAME).
    """
    mapping: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        src, sep, dst = part.partition("=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise ImportInputError(f"--map: expected SOURCE=TARGET pairs, got {part!r}")
        if dst not in targets and not dst.startswith("meta."):
            raise ImportInputError(
                f"--map: unknown target field {dst!r}; targets are {', '.join(targets)} "
                "or meta.NAME"
            )
        mapping[src] = dst
    return mapping


def _apply_map(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    if not mapping:
        return row
    out: dict[str, Any] = {}
    meta_extra: dict[str, Any] = {}
    for k, v in row.items():
        dst = mapping.get(k, k)
        if dst.startswith("meta."):
            meta_extra[dst[5:]] = v
        else:
            out[dst] = v
    if meta_extra:
        meta = out.get("meta")
        out["meta"] = {**(meta if isinstance(meta, dict) else {}), **meta_extra}
    return out


def _json_object(value: Any) -> Any:
    """Meta columns arrive as JSON text from CSV files and exports; parse them."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _validation_error(path: Path, where: str, exc: ValidationError,
                      row: dict[str, Any]) -> ImportInputError:
    err = exc.errors()[0]
    fld = ".".join(str(x) for x in err["loc"]) or "?"
    if err["type"] == "missing":
        fields = ", ".join(sorted(k for k in row if not k.startswith("__"))) or "none"
        hint = f" (the row has: {fields}; rename with --map SOURCE={fld})"
        msg = "required field is missing" + hint
    elif err["type"] == "extra_forbidden":
        msg = f"unknown field; map it with --map {fld}=TARGET or drop the column"
    else:
        got = type(err.get("input")).__name__
        msg = f"{err['msg'].removeprefix('Value error, ')} (got {got})"
    return ImportInputError(f"{path}: {where}: field '{fld}': {msg}")


def _prompt_fields(
    path: Path, where: str, raw: dict[str, Any], *, preset: Preset | None,
    mapping: dict[str, str], source: str | None, split: str | None,
    default_source: str | None = None,
) -> dict[str, Any]:
    row = _apply_map(raw, mapping)
    default_split = row.pop("__split__", None)
    if preset is not None:
        try:
            fields = preset.to_prompt(row)
        except KeyError as exc:
            have = ", ".join(sorted(k for k in row if not k.startswith("__")))
            raise ImportInputError(
                f"{path}: {where}: field '{exc.args[0]}': required by --preset {preset.name} "
                f"but missing (the row has: {have})"
            ) from None
        except (TypeError, ValueError) as exc:
            fld = next((f for f in preset.fields if f"'{f}'" in str(exc)), preset.fields[-1])
            raise ImportInputError(f"{path}: {where}: field '{fld}': {exc}") from None
        default_split = default_split or preset.default_split(path)
    else:
        fields = {k: v for k, v in row.items() if k in PROMPT_FIELDS}
        extra = {k: v for k, v in row.items() if k not in PROMPT_FIELDS}
        fields["meta"] = _json_object(fields.get("meta"))
        if extra:  # unmapped columns are kept, not lost
            meta = fields.get("meta")
            fields["meta"] = {**(meta if isinstance(meta, dict) else {}), **extra}
    fields["source"] = source or fields.get("source") or default_source
    fields["split"] = split or fields.get("split") or default_split
    try:
        return PromptIn(**fields).model_dump()
    except ValidationError as exc:
        raise _validation_error(path, where, exc, row) from None


def read_prompt_rows(
    path: str | Path, *, fmt: str | None = None, preset: str | None = None,
    mapping: dict[str, str] | None = None, source: str | None = None, split: str | None = None,
    rows: Iterator[tuple[str, dict[str, Any]]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Validated prompt fields (``PromptIn`` as a dict) of each row of a file.

    ``source``: ``--source``, else the row's ``source`` field, else the preset name, else the
    file name; ``split``: ``--split``, else the row's, else the preset's default (GSM8K: the
    file stem when it is train/test; SVAMP: test) or the split of a saved DatasetDict.
    ``rows`` replaces reading ``path`` (which then only names the input in errors).
    """
    path = Path(path)
    p = get_preset(preset) if preset else None
    default_source = p.name if p else (path.stem if path.is_file() else path.name)
    for where, raw in rows if rows is not None else read_rows(path, fmt):
        yield _prompt_fields(path, where, raw, preset=p, mapping=mapping or {},
                             source=source, split=split, default_source=default_source)


def read_preset_rows(path: Path, preset: Preset) -> Iterator[dict[str, Any]]:
    """Prompt fields of a benchmark file read with ``preset``, plus the raw row as ``_raw``."""
    for where, raw in read_rows(path):
        fields = _prompt_fields(path, where, raw, preset=preset, mapping={}, source=None,
                                split=None, default_source=preset.name)
        fields["_raw"] = raw
        yield fields


def _record_fields(path: Path, where: str, raw: dict[str, Any],
                   mapping: dict[str, str], source: str | None) -> dict[str, Any]:
    row = _apply_map(raw, mapping)
    row.pop("__split__", None)
    passthrough = {k: row.pop(k) for k in list(row) if k in PASSTHROUGH_COLUMNS}
    for k in EXPORT_ONLY_COLUMNS:
        row.pop(k, None)
    row["meta"] = _json_object(row.get("meta"))
    if source:
        row["source"] = source
    try:
        rec = RecordIn(**row).model_dump()
    except ValidationError as exc:
        raise _validation_error(path, where, exc, row) from None
    passthrough["templates"] = _json_object(passthrough.get("templates"))
    rec.update({k: v for k, v in passthrough.items() if v is not None})
    return rec


# -- writing -------------------------------------------------------------------------------------


def _require_rows(path: Path, n: int) -> None:
    if n == 0:
        raise ImportInputError(f"{path}: file is empty (no rows to import)")


class _Staged:
    """Validated rows held compactly (Arrow, JSON columns as text) until the write.

    A million records as Python dicts would take gigabytes; packed every BATCH_ROWS rows
    they take about what their text does, and come back as dict batches for the insert.
    """

    def __init__(self, progress: Tracker | None = None) -> None:
        self.tables: list[pa.Table] = []
        self.pending: list[dict[str, Any]] = []
        self.n = 0
        self.progress = progress  # counts the rows read and validated

    def append(self, row: dict[str, Any]) -> None:
        """Stage one row (the progress bar moves every PROGRESS_EVERY rows)."""
        for c in ("meta", "templates"):
            if row.get(c) is not None and not isinstance(row[c], str):
                row[c] = canonical_json(row[c])
        self.pending.append(row)
        self.n += 1
        if self.progress is not None and self.n % PROGRESS_EVERY == 0:
            self.progress.advance(PROGRESS_EVERY)
        if len(self.pending) >= BATCH_ROWS:
            self._pack()

    def _pack(self) -> None:
        if self.pending:
            cols = list(self.pending[0])
            self.tables.append(pa.table({c: [r[c] for r in self.pending] for c in cols}))
            self.pending = []

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        """The rows again, as lists of dicts of at most BATCH_ROWS rows."""
        self._pack()
        for table in self.tables:
            yield table.to_pylist()


def _reading(progress: Tracker | None, label: str) -> None:
    if progress is not None:
        progress.update(description=f"read {label}", info="rows read and validated",
                        force=True)


def _write(store: Store, run_id: str, prompts: _Staged, records: _Staged, label: str,
           progress: Tracker | None) -> tuple[int, int]:
    from corpus.records import insert_prompts, insert_records

    if progress is not None:
        progress.restart(f"write {label}", prompts.n + records.n)
        progress.update(info="rows written")
    new_p = new_r = 0
    # One transaction: the file lands whole or not at all (see the module docstring).
    with store.transaction() as con:
        for batch in prompts.batches():
            new_p += insert_prompts(con, batch, run_id)
            if progress is not None:
                progress.advance(len(batch))
        for batch in records.batches():
            new_r += insert_records(con, batch, run_id)
            if progress is not None:
                progress.advance(len(batch))
    return new_p, new_r


def _file_config(path: Path, fmt: str | None) -> dict[str, Any]:
    fmt = fmt or detect_format(path) if path.exists() else fmt
    config: dict[str, Any] = {"path": str(path.resolve()), "format": fmt}
    if path.is_file():
        config["sha256"] = file_sha256(str(path))
    return config


def _land_prompts(
    store: Store, command: str, config: dict[str, Any], label: Path,
    fields: Iterable[dict[str, Any]], progress: Tracker | None,
) -> ImportResult:
    """Validate every row first, then write them all in one transaction under one run."""
    from corpus.records import make_prompt

    with store.run(command, config) as run:
        name = label.name if label.exists() else str(label)  # a file, or hf:NAME
        _reading(progress, name)
        rows = _Staged(progress)
        for f in fields:
            rows.append(make_prompt(**f))
        _require_rows(label, rows.n)
        new_p, _ = _write(store, run.run_id, rows, _Staged(), name, progress)
        run.add("rows", rows.n)
        run.add("prompts", new_p)
    return ImportResult(str(label), run.run_id, rows.n, new_prompts=new_p, config=config)


def import_prompts(
    store: Store, path: str | Path, *, fmt: str | None = None, preset: str | None = None,
    mapping: dict[str, str] | None = None, source: str | None = None,
    split: str | None = None, progress: Tracker | None = None,
) -> ImportResult:
    """Import a prompt file atomically; returns counts (re-importing adds 0 new).

    ``progress`` (a ``corpus.display`` tracker) counts rows read and validated, then written.
    """

    path = Path(path)
    if not path.exists():
        raise ImportInputError(f"{path}: no such file or directory")
    config = _file_config(path, fmt) | {"preset": preset, "map": mapping or {},
                                        "source": source, "split": split}
    fields = read_prompt_rows(path, fmt=fmt, preset=preset, mapping=mapping, source=source,
                              split=split)
    return _land_prompts(store, "prompts import", config, path, fields, progress)


def import_hub_prompts(
    store: Store, name: str, *, preset: str | None = None,
    mapping: dict[str, str] | None = None, source: str | None = None,
    split: str | None = None, progress: Tracker | None = None,
) -> ImportResult:
    """Import prompts from ``datasets.load_dataset(NAME[:CONFIG])`` atomically (``--hf``)."""

    config = {"hf": name, "preset": preset, "map": mapping or {}, "source": source,
              "split": split}
    label = Path(f"hf:{name}")
    fields = read_prompt_rows(label, preset=preset, mapping=mapping, source=source,
                              split=split, rows=read_hub_rows(name, split))
    return _land_prompts(store, "prompts import", config, label, fields, progress)


def import_generated(
    store: Store, n: int, *, seed: int = 0, split: str | None = None,
    progress: Tracker | None = None,
) -> ImportResult:
    """Generate ``n`` synthetic word problems (source ``generated``) and import them."""
    from corpus.wordproblems import generate_problems

    if n < 1:
        raise CorpusError("--n must be at least 1")
    config = {"n": n, "seed": seed, "split": split, "generator": "corpus.wordproblems"}
    fields = ({"text": p["text"], "gold_answer": p["gold_answer"],
               "gold_rationale": p["gold_rationale"], "source": "generated", "split": split,
               "meta": p["meta"]} for p in generate_problems(n, seed))
    return _land_prompts(store, "prompts generate", config,
                         Path(f"generated(n={n}, seed={seed})"), fields, progress)


def import_records(
    store: Store, path: str | Path, *, fmt: str | None = None,
    mapping: dict[str, str] | None = None, source: str | None = None,
    progress: Tracker | None = None,
) -> ImportResult:
    """Import (p, r, f, r̂) records (``RecordIn`` rows) and their prompts, atomically."""
    from corpus.records import make_prompt, make_record

    path = Path(path)
    if not path.exists():
        raise ImportInputError(f"{path}: no such file or directory")
    mapping = mapping or {}
    config = _file_config(path, fmt) | {"map": mapping, "source": source}
    with store.run("records import", config) as run:
        _reading(progress, path.name)
        prompts, records = _Staged(), _Staged(progress)
        pids: dict[str, str] = {}  # prompt text -> id: hash each distinct prompt once
        default_source = source or path.stem
        for where, raw in read_rows(path, fmt):
            rec = _record_fields(path, where, raw, mapping, source)
            src = rec.pop("source") or default_source
            pid = pids.get(rec["prompt"])
            if pid is None:
                prompt = make_prompt(rec["prompt"], gold_answer=rec["gold_answer"], source=src)
                pid = pids[rec["prompt"]] = prompt["prompt_id"]
                prompts.append(prompt)
            records.append(make_record(
                prompt_id=pid, kind=rec["kind"], round=rec["round"],
                response=rec["response"], feedback=rec["feedback"], verdict=rec["verdict"],
                refinement=rec["refinement"], parent_record_id=rec.get("parent_record_id"),
                responder=rec.get("responder"), teacher=rec.get("teacher"),
                templates=rec.get("templates"), source=src, meta=rec["meta"],
            ))
        del pids
        _require_rows(path, records.n)
        new_p, new_r = _write(store, run.run_id, prompts, records, path.name, progress)
        run.add("rows", records.n)
        run.add("prompts", new_p)
        run.add("records", new_r)
    return ImportResult(str(path), run.run_id, records.n, new_prompts=new_p,
                        new_records=new_r, config=config)
