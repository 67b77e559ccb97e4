"""JSON Schema files for exported rows and manifests, generated from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.records import ExportRow, PromptIn, RecordIn, SnapshotManifest

SCHEMA_DIR = Path(__file__).parent / "jsonschema"
MODELS = {
    "export_row": ExportRow,
    "manifest": SnapshotManifest,
    "record_in": RecordIn,
    "prompt_in": PromptIn,
}


def render_json_schemas() -> dict[str, str]:
    """File name -> JSON text of every schema, exactly as written to disk."""
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
        + "\n"
        for name, model in MODELS.items()
    }


def write_json_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Regenerate the JSON Schema files; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for fname, text in render_json_schemas().items():
        path = directory / fname
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
