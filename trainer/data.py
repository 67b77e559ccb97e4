"""Read an export directory and verify it before a single token is trained.

An export (``selfevo snapshot export``) is ``manifest.json`` + ``README.md`` + one data file
(``records.parquet``, ``records.jsonl`` or a ``hf/`` datasets folder). Verification, in order:

1. the manifest parses, its ``schema_version`` is the one this trainer reads and its
   ``conversation_version`` the layout this trainer builds (any other is refused: a layout
   the trainer cannot rebuild is one it cannot verify);
2. every listed file exists with the recorded byte size and sha256;
3. every row has the ExportRow fields, and its ``prompt_id`` and ``record_id`` recomputed from
   its content match the stored ids (so an edited text cannot slip through under the old id);
4. each row's ``messages`` (what is trained, with their ``train`` flags) equal
   :func:`schemas.conversation.record_messages` of its id-covered fields in the layout the
   manifest gives its kind (``layouts``);
5. ``content_hash`` equals ``selection_hash`` of the row ids, and ``n`` the row count;
6. ``training_hash`` equals :func:`schemas.records.current_training_hash` of that content
   hash and the manifest's layouts: the chain rows -> record ids -> content hash -> training
   hash covers the texts, the flags and the manifest fields that change training.

Any mismatch raises :class:`~trainer.errors.TrainerError` naming the file, row and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.conversation import CONVERSATION_VERSION, record_messages
from schemas.identity import file_sha256, prompt_id, record_id, selection_hash
from schemas.records import (
    EXPORT_SCHEMA_VERSION,
    ExportRow,
    SnapshotManifest,
    current_training_hash,
)
from trainer.errors import TrainerError


@dataclass
class Export:
    """A verified export: its manifest and rows (dicts in the ExportRow layout)."""

    path: Path
    manifest: SnapshotManifest
    rows: list[dict[str, Any]]

    @property
    def content_hash(self) -> str:
        """The snapshot hash recorded with every checkpoint trained on it."""
        return self.manifest.content_hash


def read_manifest(export_dir: str | Path) -> SnapshotManifest:
    """Parse ``manifest.json`` and check its schema version."""
    path = Path(export_dir) / "manifest.json"
    if not path.is_file():
        raise TrainerError(
            f"{path} not found: --data must be a directory written by `selfevo snapshot export`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainerError(f"{path} is not a readable export manifest: {exc}") from None
    # The version first: an older or newer manifest differs in fields, and "re-export" is
    # the useful message, not the first field pydantic trips on.
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != EXPORT_SCHEMA_VERSION:
        raise TrainerError(
            f"{path}: schema_version {version} but this trainer reads "
            f"{EXPORT_SCHEMA_VERSION}; re-export the snapshot with this selfevo version"
        )
    try:
        manifest = SnapshotManifest.model_validate(raw)
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise TrainerError(f"{path} is not a valid export manifest: {first}") from None
    if manifest.conversation_version != CONVERSATION_VERSION:
        raise TrainerError(
            f"{path}: conversation_version {manifest.conversation_version!r} is not the layout "
            f"this trainer builds ({CONVERSATION_VERSION}); re-export the snapshot with this "
            "selfevo version"
        )
    return manifest


def _file_sha256(path: Path) -> str:
    if path.is_dir():  # a hf/ datasets folder is hashed by the exporter file by file
        raise TrainerError(f"manifest lists directory {path}; expected files")
    return file_sha256(str(path))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of one data file (parquet, jsonl, or an arrow file of a datasets folder)."""
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if name.endswith(".jsonl"):
        rows = []
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise TrainerError(f"{path}:{i}: invalid JSON ({exc.msg})") from None
        return rows
    if name.endswith(".arrow"):
        import pyarrow as pa

        with pa.memory_map(str(path)) as source:
            try:
                table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(source).read_all()
        return table.to_pylist()
    return []  # dataset_info.json, state.json, README.md: metadata, not rows


def _check_fields(row: dict[str, Any], where: str) -> None:
    try:
        ExportRow.model_validate(row)
    except ValidationError as exc:
        err = exc.errors()[0]
        fld = ".".join(str(x) for x in err["loc"]) or "?"
        raise TrainerError(
            f"{where}: field '{fld}': {err['msg']}; this is not a row written by `selfevo "
            "snapshot export` (or it was edited) — re-export the snapshot"
        ) from None


def verify_row(row: dict[str, Any], where: str, layout: str | None = None) -> None:
    """Check a row's fields, recompute its ids and messages (in ``layout``, default the
    kind's natural one) from its content; raise on any mismatch."""
    _check_fields(row, where)
    pid = prompt_id(row["prompt"])
    if row.get("prompt_id") != pid:
        raise TrainerError(
            f"{where}: prompt_id {row.get('prompt_id')} does not match its prompt text "
            f"(expected {pid}); the export was edited — re-export the snapshot"
        )
    rid = record_id(
        prompt_id=pid,
        kind=row["kind"],
        round=row["round"],
        response=row.get("response"),
        feedback=row.get("feedback"),
        verdict=row.get("verdict"),
        refinement=row.get("refinement"),
        parent_record_id=row.get("parent_record_id"),
    )
    if row.get("record_id") != rid:
        raise TrainerError(
            f"{where}: record_id {row.get('record_id')} does not match the row's content "
            f"(expected {rid}); the export was edited — re-export the snapshot"
        )
    expected = record_messages(
        kind=row["kind"],
        prompt=row["prompt"],
        response=row.get("response"),
        feedback=row.get("feedback"),
        refinement=row.get("refinement"),
        layout=layout,
    )
    got = [
        {"role": m["role"], "content": m["content"], "train": m["train"]}
        for m in row.get("messages") or []
    ]
    if got != expected:
        raise TrainerError(
            f"{where}: messages do not match the {CONVERSATION_VERSION} layout of the "
            f"row's texts; re-export the snapshot"
        )


def load_export(export_dir: str | Path) -> Export:
    """Verify an export directory (see module docstring) and return its rows."""
    root = Path(export_dir)
    manifest = read_manifest(root)
    rows: list[dict[str, Any]] = []
    for f in manifest.files:
        path = root / f.path
        if not path.is_file():
            raise TrainerError(f"{path} listed in manifest.json is missing")
        size = path.stat().st_size
        if size != f.bytes:
            raise TrainerError(f"{path}: {size} bytes but manifest.json says {f.bytes}")
        digest = _file_sha256(path)
        if digest != f.sha256:
            raise TrainerError(
                f"{path}: sha256 {digest[:12]}… does not match manifest.json "
                f"({f.sha256[:12]}…); the file changed after export — re-export the snapshot"
            )
        file_rows = _read_rows(path)
        if file_rows and len(file_rows) != f.rows:
            raise TrainerError(f"{path}: {len(file_rows)} rows but manifest.json says {f.rows}")
        rows.extend(file_rows)
    if len(rows) != manifest.n:
        raise TrainerError(f"{root}: {len(rows)} rows but manifest.json says n={manifest.n}")
    for i, row in enumerate(rows):
        verify_row(row, f"{root} row {i} ({row.get('record_id')})",
                   manifest.layouts.get(str(row.get("kind"))))  # verify_row names a missing kind
    got = selection_hash([r["record_id"] for r in rows])
    if got != manifest.content_hash:
        raise TrainerError(
            f"{root}/manifest.json: content_hash {manifest.content_hash} but the rows hash to "
            f"{got}; rows were added or removed — re-export the snapshot"
        )
    # From the rows just verified and this trainer's own layout, not from manifest fields.
    expected = current_training_hash(got, manifest.layouts)
    if manifest.training_hash != expected:
        raise TrainerError(
            f"{root}/manifest.json: training_hash {manifest.training_hash} but these rows in "
            f"this trainer's layout hash to {expected}; the manifest was edited — re-export "
            "the snapshot"
        )
    return Export(path=root, manifest=manifest, rows=rows)
