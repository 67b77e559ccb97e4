"""``selfevo train``: fine-tune on an export, then register the checkpoint in the store.

The training itself is :func:`trainer.train.train` (which never touches the store); this app
layer resolves the base-model alias, maps flags onto :class:`trainer.config.TrainConfig` and,
with ``--db``, writes the ``models`` row.
"""

from __future__ import annotations

from typing import Any

import click

from corpus.options import STORE_SPEC
from selfevo import SelfevoError


@click.command("train")
@click.option("--data", type=click.Path(file_okay=False),
              help="Export directory (selfevo snapshot export); required unless --plan.")
@click.option("--base", required=True, help="Base model folder, or the alias smollm2-135m.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Output directory; required unless --plan.")
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
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]),
              help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 (loss scaling) or fp32.")
@click.option("--shard", type=click.Choice(["ddp", "fsdp", "none"]),
              help="Under torchrun: ddp replicates the model (default), fsdp shards it (FSDP2).")
@click.option("--shard-group", type=int,
              help="fsdp: shard within groups of N ranks (GPUs per node), replicate across (HSDP).")
@click.option("--cpu-offload", is_flag=True, default=None,
              help="fsdp: keep sharded weights, gradients and optimizer state in CPU memory.")
@click.option("--plan", is_flag=True,
              help="Print the per-GPU memory plan for --base's config.json and exit.")
@click.option("--world-size", type=int, default=1, show_default=True,
              help="--plan: number of GPUs (all nodes).")
@click.option("--gpu-memory", type=float, default=80.0, show_default=True,
              help="--plan: GiB per GPU.")
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("--save-every", type=int, help="Checkpoint every N steps.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --out.")
@click.option("--merge", is_flag=True, help="Also write merged weights to OUT/merged.")
@click.option("--show-masks", type=int, default=0, metavar="N",
              help="Print N examples with trained spans highlighted, then exit.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any other TrainConfig field, e.g. --set warmup_ratio=0.1.")
@click.option("--db", envvar="SELFEVO_DB", default=None, type=STORE_SPEC,
              help="Register the checkpoint in this store's models table.")
def train(data: str | None, base: str, out: str | None, show_masks: int,
          overrides: tuple[str, ...], no_chat_template: bool, db: str | None, plan: bool,
          world_size: int, gpu_memory: float, **flags: Any) -> None:
    """Fine-tune a causal LM on an exported snapshot (LoRA by default, or --full).

    Trains feedback and refinement turns of meta/self records and answers of qa records
    (docs/train.md). For several GPUs use torchrun --nproc_per_node N -m trainer.

    \b
    Example:
      selfevo train --data exports/meta-v1 --base smollm2-135m --out runs/m1 --max-steps 200
      selfevo train --data exports/meta-v1 --base smollm2-135m --out runs/m1 --show-masks 2
      selfevo train --base ./llama-7b --full --shard fsdp --world-size 8 --max-len 4096 --plan
    """
    from generation.backends.aliases import resolve_model
    from trainer.config import TrainConfig, parse_overrides

    values = {k: v for k, v in flags.items() if v is not None}
    try:
        values.update(parse_overrides(overrides))
        if no_chat_template:
            values["chat_template"] = False
        cfg = TrainConfig.from_dict({"data": data or "", "base": base, "out": out or "",
                                     **values})
    except (ValueError, TypeError) as exc:
        raise SelfevoError(f"{exc}; see `selfevo train --help` and docs/train.md") from None
    cfg.base = resolve_model(base)  # an alias converts its model: only once settings check
    if plan:
        from trainer.plan import plan_report

        text, _ = plan_report(cfg, world_size, gpu_memory)
        click.echo(text)
        return
    if not data or not out:
        raise SelfevoError("--data EXPORT_DIR and --out DIR are required (or use --plan)")
    if show_masks:
        from trainer.show_masks import show_masks as show

        show(cfg, show_masks)
        return
    from corpus.display import progress
    from selfevo.checkpoints import training_progress
    from trainer.train import train as run_training

    with progress("train") as bar:
        result = run_training(cfg, log=click.echo,
                              on_step=training_progress(bar) if cfg.progress else None)
    click.echo(f"saved {result.final_dir} ({result.steps} steps, loss "
               f"{result.metrics.get('loss', float('nan')):.4f}, snapshot {result.snapshot_hash})")
    if result.merged_dir:
        click.echo(f"merged weights in {result.merged_dir}")
    if db:
        from corpus.store import Store
        from selfevo.checkpoints import register_checkpoint

        with Store.open(db, command="train") as store, store.run("train", cfg.resolved()) as run:
            model_id = register_checkpoint(store, run, result, cfg)
        click.echo(f"registered model {model_id} in {store.spec}")  # a password shows as ***
