"""Trained checkpoints in the store: one registration for ``train``, ``evolve`` and the demo.

A ``models`` row names the checkpoint's folder, its base, whether it is a LoRA adapter, the
snapshot hash it was trained on, the resolved trainer config and its final metrics, all as
canonical JSON so the same training stores the same text whichever command ran it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corpus.store import Run, Store
from generation.backends.aliases import resolve_model
from schemas.identity import canonical_json, content_id


def register_checkpoint(store: Store, run: Run, result: Any, cfg: Any) -> str:
    """Insert a finished checkpoint into ``models`` under ``run``; returns its model_id."""
    path = str(Path(result.final_dir).resolve())
    config = cfg.resolved()
    model_id = content_id({"path": path, "snapshot_hash": result.snapshot_hash,
                           "config": config})
    with store.transaction() as con:
        con.execute(
            "INSERT OR REPLACE INTO models (model_id, base, path, adapter, snapshot_hash,"
            " config, metrics, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [model_id, cfg.base, path, not cfg.full, result.snapshot_hash,
             canonical_json(config), canonical_json(result.metrics), run.run_id],
        )
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
