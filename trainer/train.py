"""The training loop: read it top to bottom.

    export -> verified rows -> examples (ids, labels) -> packed rows -> micro-batches
    -> for each optimizer step: loss summed over the accumulation window (and all ranks),
       divided by the number of trained tokens in that window -> AdamW -> schedule
    -> metrics.jsonl, checkpoints (model + optimizer + RNG + data position [+ fp16 loss scale]),
       final/, merged/

Data order is a pure function of (seed, step): row ``g`` of the endless stream is row
``g % n`` of epoch ``g // n``'s seeded shuffle, and step ``s`` consumes stream rows
``[s*R, (s+1)*R)`` with ``R = batch_size * grad_accum * world_size``. So resuming at step
``s`` needs nothing but ``s`` — and DDP over W ranks sees exactly the rows that a single
process with ``grad_accum * W`` would, which is why their losses match.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.version import code_version
from trainer.config import TrainConfig
from trainer.data import load_export
from trainer.errors import TrainerError
from trainer.packing import collate, pack_examples, weighted_loss_sum
from trainer.sequences import Example, build_examples

META_FILE = "selfevo_train.json"
STATE_FILE = "trainer_state.pt"

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


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    """Process group facts: rank, world size, device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        """True on the process that logs and saves."""
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on GPU)."""
    import torch
    import torch.distributed as td

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    if world > 1 and not td.is_initialized():
        td.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank=rank, world=world, local_rank=local, device=device)


def all_reduce_sum(x: Any, dist: Dist) -> Any:
    """Sum a tensor over ranks (no-op on one process)."""
    if dist.world > 1:
        import torch.distributed as td

        td.all_reduce(x, op=td.ReduceOp.SUM)
    return x


# --------------------------------------------------------------------------- model


def load_model(cfg: TrainConfig, dist: Dist, resume_dir: Path | None) -> Any:
    """The causal LM, wrapped with LoRA unless ``cfg.full``; loaded from ``resume_dir`` if given."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = dist.device.startswith("cuda")
    attn = cfg.attn
    if attn == "auto":
        # Packed rows need varlen attention: FlashAttention-2 when installed (GPU), else
        # per-example SDPA (trainer/attention.py) instead of a wasteful block-diagonal mask.
        attn = "varlen"
        if cuda:
            try:
                import flash_attn  # noqa: F401

                attn = "flash_attention_2"
            except ImportError:
                pass
    if attn == "varlen":
        from trainer.attention import register

        attn = register()
    # Frozen LoRA bases can live in half precision on GPU (fp16 when asked for: GPUs without
    # bf16); trained weights stay fp32, autocast does the half-precision matmuls.
    dtype = torch.float32
    if cuda and not cfg.full and cfg.precision != "fp32":
        dtype = torch.float16 if cfg.precision == "fp16" else torch.bfloat16
    source = str(resume_dir) if (resume_dir is not None and cfg.full) else cfg.base
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if not cfg.full:
            model.enable_input_require_grads()
    if not cfg.full:
        from peft import LoraConfig, PeftModel, get_peft_model

        torch.manual_seed(cfg.seed)  # LoRA A matrices are random: seed them
        if resume_dir is not None:
            model = PeftModel.from_pretrained(model, str(resume_dir), is_trainable=True)
        else:
            targets: Any = cfg.lora_targets
            if targets != "all-linear":
                targets = [t.strip() for t in targets.split(",") if t.strip()]
            lora = LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules=targets, task_type="CAUSAL_LM",
            )
            with warnings.catch_warnings():  # peft calls a transformers alias deprecated in v5
                warnings.simplefilter("ignore", FutureWarning)
                model = get_peft_model(model, lora)
        for p in model.parameters():  # adapters train in fp32 even over a bf16 base
            if p.requires_grad:
                p.data = p.data.float()
    return model.to(dist.device)


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


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(out: Path) -> Path | None:
    """The newest ``checkpoints/step-*`` with a complete state file, if any."""
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    done = [c for c in ckpts if (c / STATE_FILE).is_file()]
    return done[-1] if done else None


def save_checkpoint(
    path: Path, model: Any, tokenizer: Any, meta: dict[str, Any], state: dict[str, Any] | None
) -> None:
    """Write model/adapter + tokenizer + metadata (+ optimizer/RNG state) into ``path``."""
    import torch

    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if state is not None:
        tmp = path / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path / STATE_FILE)  # the state file last: its presence marks completeness


def rng_state() -> dict[str, Any]:
    """All RNG states that affect training (dropout, Python)."""
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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

    device = next(p for p in model.parameters()).device
    weight = torch.tensor([float(sum(b["weights"].sum() for b in batches))], device=device)
    count = torch.tensor([float(sum((b["targets"] != -100).sum() for b in batches))], device=device)
    all_reduce_sum(weight, dist)
    all_reduce_sum(count, dist)
    denom = max(weight.item(), 1e-12)
    loss_sum = torch.zeros(1, device=device)
    for k, batch in enumerate(batches):
        batch = {key: v.to(device) for key, v in batch.items()}
        sync = k == len(batches) - 1
        ctx = model.no_sync() if (dist.world > 1 and not sync) else contextlib.nullcontext()
        with ctx, torch.autocast(
            device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ):
            s = weighted_loss_sum(model, batch)
        # DDP averages gradients over ranks; multiplying by world makes that a sum.
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
    dist = init_distributed()
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

    # 2. Model, optimizer, schedule; resume restores all of them and the RNG.
    resume_dir = latest_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_dir is None and dist.main:
        log(f"no checkpoint in {out / 'checkpoints'}; starting from scratch")
    model = load_model(cfg, dist, resume_dir)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps)
    autocast_dtype = autocast_dtype_for(cfg.precision, cuda)
    scaler = make_grad_scaler(autocast_dtype, "cuda" if cuda else "cpu")
    start_step, tokens_seen = 0, 0
    if resume_dir is not None:
        state = torch.load(resume_dir / STATE_FILE, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state.get("scaler"):  # fp16: continue at the same loss scale
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][dist.rank] if dist.rank < len(state["rng"]) else state["rng"][0])
        start_step, tokens_seen = state["step"], state["tokens_seen"]
        if dist.main:
            log(f"resumed from {resume_dir} at step {start_step}")
    raw_model = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[dist.local_rank] if cuda else None)
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
        if cfg.max_grad_norm > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.max_grad_norm)
        else:
            gnorm = torch.nn.utils.get_total_norm(
                [p.grad for p in raw_model.parameters() if p.grad is not None]
            )
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
            _save_step(out, step + 1, raw_model, tokenizer, meta_base, last, optimizer,
                       scheduler, tokens_seen, dist, scaler)

    # 4. Final checkpoint (resumable), final/ for serving and registering, optional merge.
    _save_step(out, total_steps, raw_model, tokenizer, meta_base, last, optimizer, scheduler,
               tokens_seen, dist, scaler)
    final = out / "final"
    merged = None
    if dist.main:
        meta = {**meta_base, "step": total_steps, "metrics": last}
        save_checkpoint(final, raw_model, tokenizer, meta, None)
        if cfg.merge:
            merged = out / "merged"
            to_save = raw_model.merge_and_unload() if not cfg.full else raw_model
            save_checkpoint(merged, to_save, tokenizer, {**meta, "format": "merged"}, None)
    if dist.world > 1:
        import torch.distributed as td

        td.barrier()
    return TrainResult(
        final_dir=final, merged_dir=merged, snapshot_hash=export.content_hash,
        steps=total_steps, metrics=last, losses=losses,
    )


def _save_step(out: Path, step: int, model: Any, tokenizer: Any, meta_base: dict, metrics: dict,
               optimizer: Any, scheduler: Any, tokens_seen: int, dist: Dist,
               scaler: Any = None) -> None:
    """Resumable checkpoint ``checkpoints/step-NNNNNN`` (RNG states gathered from all ranks)."""
    rng = [rng_state()]
    if dist.world > 1:
        import torch.distributed as td

        gathered: list[Any] = [None] * dist.world
        td.all_gather_object(gathered, rng[0])
        rng = gathered
    if dist.main:
        state = {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng, "step": step, "tokens_seen": tokens_seen,
        }
        if scaler is not None and scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        meta = {**meta_base, "step": step, "metrics": metrics}
        save_checkpoint(out / "checkpoints" / f"step-{step:06d}", model, tokenizer, meta, state)

