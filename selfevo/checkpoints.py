"""Trained checkpoints in the store: one registration for ``train``, ``evolve`` and the demo.

A ``models`` row is identified by content, not by where the checkpoint lies: ``model_id`` is
the hash of its weights fingerprint (``weights``, the same ``weights:<sha>`` its calls carry
as ``endpoint``), its base's readable name and the snapshot hash it was trained on. The row
also names the checkpoint the way ``hf:`` specs do (``name``), whether it is a LoRA adapter,
the trainer settings and final metrics as canonical JSON (the same training stores the same
text whichever command ran it), and keeps the folders in their own columns (``path``,
``base_path``): a store moved to another machine still finds and names its models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from corpus.inserts import insert_absent
from corpus.store import Run, Store
from generation.backends.aliases import resolve_model
from schemas.identity import canonical_json, content_id

#: Trainer settings that are folders: stored in path columns (path, base_path) or identified
#: by content (the export ``data`` by its snapshot hash), not in ``models.config``.
PATH_SETTINGS = ("data", "out", "base")


def register_checkpoint(store: Store, run: Run, result: Any, cfg: Any) -> str:
    """Insert a finished checkpoint into ``models`` under ``run``; returns its model_id.

    Registering the same checkpoint again (a resumed run, the folder moved, or a training
    that reproduced identical weights from the same snapshot and base) keeps its model_id and
    the run that first registered it, and updates where it now lies.
    """
    from generation.backends.hf import readable_name, weights_fingerprint

    path = str(Path(result.final_dir).resolve())
    weights = weights_fingerprint(path)
    base = readable_name(cfg.base)
    base_path = str(Path(cfg.base).resolve()) if Path(cfg.base).is_dir() else None
    config = {k: v for k, v in cfg.resolved().items() if k not in PATH_SETTINGS}
    model_id = content_id({"weights": weights, "base": base,
                           "snapshot_hash": result.snapshot_hash})
    row = {"model_id": model_id, "name": readable_name(path), "weights": weights, "base": base,
           "base_path": base_path, "path": path, "adapter": not cfg.full,
           "snapshot_hash": result.snapshot_hash, "config": canonical_json(config),
           "metrics": canonical_json(result.metrics), "run_id": run.run_id}

    def register(con: Any) -> None:
        # The same checkpoint again keeps the run that made it and moves: an UPDATE of where
        # it lies, then an anti-join insert (no ON CONFLICT: a lake has no key to conflict on).
        con.execute("UPDATE models SET name = ?, path = ?, base_path = ? WHERE model_id = ?",
                    [row["name"], path, base_path, model_id])
        insert_absent(con, "models", "model_id", pa.Table.from_pylist([row]))

    store.transact(register)
    run.add("models", 1)
    return model_id


def merge_adapter(base: str, adapter: str, out: Path) -> None:
    """Write base + LoRA adapter as one full-weights model folder."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = resolve_model(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok_dir = adapter if (Path(adapter) / "tokenizer_config.json").exists() else base
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(tmp)
    tmp.rename(out)


def training_progress(tracker: Any) -> Any:
    """An ``on_step`` for :func:`trainer.train.train` that moves a ``corpus.display`` bar.

    The trainer sees only ``schemas``; this is where its steps meet the one progress helper
    (``selfevo train``, evolve's train stage, the demo's meta training).
    """

    def on_step(step: int, total: int, metrics: dict[str, Any]) -> None:
        info = f"loss {metrics['loss']:.4f}" if "loss" in metrics else None
        tracker.update(completed=step, total=total, info=info, force=not metrics or step == total)

    return on_step
