"""The training loop: read it top to bottom.

    export -> verified rows -> examples (ids, labels) -> packed rows -> micro-batches
    -> for each optimizer step: loss summed over the accumulation window (and all ranks),
       divided by the number of trained tokens in that window -> AdamW -> schedule
    -> metrics.jsonl, checkpoints (model + optimizer + RNG + data position [+ fp16 loss scale]),
       final/, merged/

Replicating (DDP) or sharding (FSDP2) the model over torchrun ranks is trainer/sharding.py;
the checkpoint format (torch.distributed.checkpoint) is trainer/checkpoint.py.

Data order is a pure function of (seed, step): row ``g`` of the endless stream is row
``g % n`` of epoch ``g // n``'s seeded shuffle, and step ``s`` consumes stream rows
``[s*R, (s+1)*R)`` with ``R = batch_size * grad_accum * world_size``. So resuming at step
``s`` needs nothing but ``s`` — and W ranks (DDP or FSDP) see exactly the rows that a single
process with ``grad_accum * W`` would, which is why their losses match.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.version import code_version
from trainer.checkpoint import (
    META_FILE,
    data_order_note,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_pretrained,
)
from trainer.config import TrainConfig
from trainer.data import load_export
from trainer.errors import TrainerError
from trainer.packing import collate, pack_examples, weighted_loss_sum
from trainer.sequences import Example, build_examples
from trainer.sharding import (
    Dist,
    all_reduce_sum,
    build_model,
    clip_grad_norm,
    gathered_model,
    init_distributed,
    leave,
    no_sync,
    parameter_counts,
)

#: ``on_step(step, total_steps, metrics)``: called on rank 0 once before the first step
#: (``step`` = where a resumed run starts, ``metrics`` empty) and after every step with that
#: step's metrics (loss, lr, grad_norm, tokens_per_s, …). How progress is shown is the
#: caller's business: ``selfevo train`` draws a bar, ``python -m trainer`` prints lines.
OnStep = Callable[[int, int, dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a finished run produced (the app layer registers ``final_dir`` in the store)."""

    final_dir: Path
    merged_dir: Path | None
    snapshot_hash: str
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- optimizer


def make_optimizer(model: Any, cfg: TrainConfig, total_steps: int) -> tuple[Any, Any]:
    """AdamW (no decay on biases/norms) and a warmup + cosine/linear/constant LambdaLR."""
    import torch

    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    warmup = int(round(cfg.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.schedule == "linear":
            shape = 1.0 - progress
        elif cfg.schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            raise TrainerError(f"unknown schedule {cfg.schedule!r}: use cosine, linear or constant")
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# --------------------------------------------------------------------------- data order


def stream_rows(n_rows: int, seed: int, start: int, count: int) -> list[int]:
    """Rows ``[start, start+count)`` of the endless per-epoch-shuffled stream."""
    out = []
    epoch_cache: dict[int, list[int]] = {}
    for g in range(start, start + count):
        epoch = g // n_rows
        if epoch not in epoch_cache:
            order = list(range(n_rows))
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
            epoch_cache[epoch] = order
        out.append(epoch_cache[epoch][g % n_rows])
    return out


def step_window(
    rows: list[list[Example]], cfg: TrainConfig, dist: Dist, step: int
) -> list[list[list[Example]]]:
    """This rank's micro-batches for optimizer step ``step`` (each a list of packed rows)."""
    per_micro = cfg.batch_size
    n_micro = cfg.grad_accum * dist.world
    picks = stream_rows(len(rows), cfg.seed, step * per_micro * n_micro, per_micro * n_micro)
    micro = [picks[i * per_micro : (i + 1) * per_micro] for i in range(n_micro)]
    mine = micro[dist.rank :: dist.world]  # rank r takes micro-batches r, r+W, ...
    return [[rows[i] for i in mb] for mb in mine]


# --------------------------------------------------------------------------- the step


def autocast_dtype_for(precision: str, cuda: bool) -> Any:
    """The autocast dtype for ``precision`` (None = plain fp32).

    ``auto`` is bf16 on GPU and fp32 on CPU (exact, and CPU autocast is slow); an explicit
    ``bf16``/``fp16`` is honoured on either device.
    """
    import torch

    choices = {"auto": torch.bfloat16 if cuda else None, "bf16": torch.bfloat16,
               "fp16": torch.float16, "fp32": None}
    if precision not in choices:
        raise TrainerError(f"unknown precision {precision!r}: use auto, bf16, fp16 or fp32")
    return choices[precision]


def uses_loss_scaling(autocast_dtype: Any) -> bool:
    """True only for fp16 autocast.

    fp16 has 5 exponent bits: small gradients underflow to zero unless the loss is scaled up
    before backward (and the gradients scaled back before clipping and the step). bf16 has
    fp32's exponent range, and fp32 needs nothing.
    """
    import torch

    return autocast_dtype == torch.float16


def make_grad_scaler(autocast_dtype: Any, device_type: str) -> Any:
    """A ``torch.amp.GradScaler``, enabled iff :func:`uses_loss_scaling`; otherwise a disabled
    pass-through (``scale`` returns the loss, ``step`` just calls ``optimizer.step``)."""
    import torch

    return torch.amp.GradScaler(device_type, enabled=uses_loss_scaling(autocast_dtype))


def backward_window(
    model: Any, batches: list[dict[str, Any]], dist: Dist, autocast_dtype: Any = None,
    scaler: Any = None,
) -> tuple[float, int]:
    """Forward + backward over one accumulation window; returns (mean loss, trained tokens).

    The loss is normalised by the trained-token weight of the WHOLE window on ALL ranks, so
    the accumulated gradient equals that of one big batch holding the same rows, however the
    tokens are split into micro-batches or ranks (a per-micro-batch mean would over-weight
    tokens of short micro-batches). With an enabled ``scaler`` (fp16) the backward runs on the
    scaled loss; the returned loss is unscaled.
    """
    import torch

    device = torch.device(dist.device)  # not the parameters': FSDP may offload them to CPU
    weight = torch.tensor([float(sum(b["weights"].sum() for b in batches))], device=device)
    count = torch.tensor([float(sum((b["targets"] != -100).sum() for b in batches))], device=device)
    all_reduce_sum(weight, dist)
    all_reduce_sum(count, dist)
    denom = max(weight.item(), 1e-12)
    loss_sum = torch.zeros(1, device=device)
    for k, batch in enumerate(batches):
        batch = {key: v.to(device) for key, v in batch.items()}
        sync = k == len(batches) - 1
        with no_sync(model, sync), torch.autocast(
            device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ):
            s = weighted_loss_sum(model, batch)
        # DDP and FSDP average gradients over ranks; multiplying by world makes that a sum.
        scaled = s * (dist.world / denom)
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += s.detach()
    all_reduce_sum(loss_sum, dist)
    return loss_sum.item() / denom, int(count.item())


# --------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, *, log: Any = print, on_step: OnStep | None = None) -> TrainResult:
    """Train on ``cfg.data`` from ``cfg.base`` into ``cfg.out``; see the module docstring.

    ``log`` hears a few lines (data, resume) on rank 0; ``on_step`` hears every step (see
    :data:`OnStep`).
    """
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the caller's progress (or none), not per-file load bars
    if not cfg.data or not cfg.base or not cfg.out:
        raise TrainerError("data, base and out are required (--data EXPORT_DIR --base MODEL --out DIR)")
    try:
        cfg.check()
    except ValueError as exc:
        raise TrainerError(str(exc)) from None
    dist = init_distributed(cfg.shard, cfg.cpu_offload)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    cuda = dist.device.startswith("cuda")

    # 1. Data: verify the export, build examples with loss masks, pack into rows.
    export = load_export(cfg.data)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples, stats = build_examples(
        export.rows, tokenizer, max_len=cfg.max_len, use_chat_template=cfg.chat_template,
        direct_weight=cfg.direct_weight, kinds=cfg.kinds, layouts=export.manifest.layouts,
    )
    if not examples:
        raise TrainerError(
            f"{cfg.data}: no trainable examples (kinds {cfg.kinds}, max_len {cfg.max_len}, "
            f"{stats.dropped_too_long} too long); raise --max-len or export other kinds"
        )
    pack_len = cfg.pack_len or cfg.max_len
    groups = pack_examples(examples, pack_len) if cfg.pack else [[i] for i in range(len(examples))]
    rows = [[examples[i] for i in g] for g in groups]
    rows_per_step = cfg.batch_size * cfg.grad_accum * dist.world
    # As in transformers.Trainer, --max-steps replaces --epochs (the data stream repeats), so
    # a requested step count is never silently cut to one pass over a small snapshot.
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(
        1, math.ceil(cfg.epochs * len(rows) / rows_per_step))
    if dist.main:
        log(
            f"{len(export.rows)} records -> {stats.examples} examples "
            f"({', '.join(f'{k} {v}' for k, v in stats.by_part.items())}; "
            f"{stats.dropped_too_long} longer than {cfg.max_len} dropped), {len(rows)} rows, "
            f"{stats.trained_tokens:,}/{stats.tokens:,} tokens trained; {total_steps} steps"
        )

    # 2. Model (replicated or sharded: trainer/sharding.py), optimizer, schedule; resume
    #    restores all of them and the RNG (trainer/checkpoint.py).
    resume_dir = latest_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_dir is None and dist.main:
        log(f"no checkpoint in {out / 'checkpoints'}; starting from scratch")
    model = build_model(cfg, dist)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps)
    # Under FSDP its mixed-precision policy casts the weights; no autocast on top.
    autocast_dtype = autocast_dtype_for(cfg.precision, cuda) if cfg.shard != "fsdp" else None
    scaler = make_grad_scaler(autocast_dtype, "cuda" if cuda else "cpu")
    start_step, tokens_seen = 0, 0
    if resume_dir is not None:
        state = load_checkpoint(resume_dir, model, optimizer, scheduler, scaler, dist)
        start_step, tokens_seen = state["step"], state["tokens_seen"]
        if dist.main:
            log(f"resumed from {resume_dir} at step {start_step}")
            if note := data_order_note(resume_dir, rows_per_step):
                log(note)
    model.train()

    meta_base = {
        "config": cfg.resolved(),
        "snapshot_hash": export.content_hash,
        "snapshot_name": export.manifest.name,
        "base_model": cfg.base,
        "code_version": code_version(),
        "format": "full" if cfg.full else "lora",
        "sequence_format": "chat-template"
        if (cfg.chat_template and tokenizer.chat_template) else "plain",
        "world_size": dist.world,
        "parallel": {"shard": cfg.shard, "mesh": dist.mesh or [dist.world],
                     **parameter_counts(model, dist)},
    }
    metrics_path = out / "metrics.jsonl"
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        kept = []
        if start_step and metrics_path.exists():  # drop lines past the resumed step
            kept = [
                ln for ln in metrics_path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= start_step
            ]
        metrics_path.write_text("".join(ln + "\n" for ln in kept))

    # 3. The loop.
    losses: list[float] = []
    last: dict[str, Any] = {}
    if resume_dir is not None:  # a finished run resumed again reports its last metrics
        last = json.loads((resume_dir / META_FILE).read_text()).get("metrics", {})
    report = on_step if dist.main else None
    if report is not None:
        report(start_step, total_steps, {})
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        window = step_window(rows, cfg, dist, step)
        batches = [collate(mb, pad_id) for mb in window]
        loss, n_trained = backward_window(model, batches, dist, autocast_dtype, scaler)
        n_tokens = torch.tensor([float(sum(len(e.input_ids) for mb in window for row in mb
                                           for e in row))])
        n_tokens = int(all_reduce_sum(n_tokens.to(dist.device), dist).item())
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        if scaler.is_enabled():
            scaler.unscale_(optimizer)  # clip and report the true gradient, not the scaled one
        gnorm = clip_grad_norm(model, cfg.max_grad_norm)  # max_grad_norm 0: only measured
        lr = scheduler.get_last_lr()[0]
        scaler.step(optimizer)  # fp16: skipped when a gradient overflowed (inf/nan)
        scaler.update()
        with warnings.catch_warnings():
            # The schedule follows the step count even when fp16 skipped the optimizer step
            # (as the data order does); torch warns about exactly that order.
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step")
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        losses.append(loss)
        tokens_seen += n_trained
        last = {
            "step": step + 1, "loss": loss, "lr": lr, "grad_norm": float(gnorm),
            "trained_tokens": n_trained, "trained_tokens_per_s": n_trained / dt,
            "tokens": n_tokens, "tokens_per_s": n_tokens / dt,
            "tokens_seen": tokens_seen, "epoch": (step + 1) * rows_per_step / len(rows),
            "step_time_s": dt,
        }
        if scaler.is_enabled():
            last["loss_scale"] = scale
            last["skipped"] = scaler.get_scale() < scale  # the scaler backs off after an overflow
        if cuda:
            last["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if dist.main and ((step + 1) % cfg.log_every == 0 or step + 1 == total_steps):
            with metrics_path.open("a") as f:
                f.write(json.dumps(last) + "\n")
        if report is not None:
            report(step + 1, total_steps, last)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
            save_checkpoint(out / "checkpoints" / f"step-{step + 1:06d}", model, optimizer,
                            scheduler, scaler, dist, step=step + 1, tokens_seen=tokens_seen,
                            meta={**meta_base, "step": step + 1, "metrics": last})

    # 4. Final checkpoint (resumable); final/ for serving and registering, gathered once
    #    into an ordinary HF folder or PEFT adapter; optional merge.
    meta = {**meta_base, "step": total_steps, "metrics": last}
    save_checkpoint(out / "checkpoints" / f"step-{total_steps:06d}", model, optimizer, scheduler,
                    scaler, dist, step=total_steps, tokens_seen=tokens_seen, meta=meta)
    final = out / "final"
    merged = None
    plain = gathered_model(model, cfg, dist)  # None on ranks other than 0
    if plain is not None:
        save_pretrained(final, plain, tokenizer, meta)
        if cfg.merge:
            merged = out / "merged"
            to_save = plain.merge_and_unload() if not cfg.full else plain
            save_pretrained(merged, to_save, tokenizer, {**meta, "format": "merged"})
    leave(dist)
    return TrainResult(
        final_dir=final, merged_dir=merged, snapshot_hash=export.content_hash,
        steps=total_steps, metrics=last, losses=losses,
    )
