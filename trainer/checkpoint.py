"""Resumable checkpoints (``torch.distributed.checkpoint``) and the exported model.

A resumable checkpoint, ``OUT/checkpoints/step-NNNNNN/``::

    dcp/                 the trained parameters (LoRA adapters, or every weight) and the AdamW
                         state, keyed by the model's own parameter names; under FSDP each rank
                         writes its own shards, under DDP one rank writes each tensor
    trainer_state.pt     scheduler, step, tokens seen, every rank's RNG state (+ fp16 loss
                         scaler); rank 0 writes it last, so its presence marks a complete
                         checkpoint (a crash mid-save leaves the previous one as the latest)
    selfevo_train.json   provenance (config, snapshot hash, code version) and last metrics

Names carry no DDP/FSDP prefix and DCP reshards while loading, so a checkpoint written by N
ranks resumes on M ranks under any ``--shard``. The frozen LoRA base is not saved: resuming
reads it from ``--base`` again. What is served and registered is ``final/`` (and
``merged/``): an ordinary Hugging Face folder or a PEFT adapter, written once at the end by
:func:`save_pretrained` from the gathered model.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError
from trainer.sharding import Dist

META_FILE = "selfevo_train.json"
STATE_FILE = "trainer_state.pt"
DCP_DIR = "dcp"


def latest_checkpoint(out: Path) -> Path | None:
    """The newest ``checkpoints/step-*`` with a complete state file, if any."""
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    done = [c for c in ckpts if (c / STATE_FILE).is_file()]
    return done[-1] if done else None


def _state_dicts(model: Any, optimizer: Any) -> dict[str, Any]:
    """The model's trained parameters and the optimizer state, as DCP saves and loads them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer,
                                        options=StateDictOptions(ignore_frozen_params=True))
    return {"model": model_sd, "optim": optim_sd}


def save_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, scaler: Any,
                    dist: Dist, *, step: int, tokens_seen: int, meta: dict[str, Any]) -> None:
    """Write a resumable checkpoint into ``path`` (a collective: every rank calls it)."""
    import torch
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # one process: DCP says it assumes no process group
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        # overwrite: a finished run resumed again saves its last step once more
        dcp.save(_state_dicts(model, optimizer),
                 storage_writer=dcp.FileSystemWriter(path / DCP_DIR, overwrite=True))
    rng = [rng_state()]
    if dist.world > 1:
        import torch.distributed as td

        rng = [None] * dist.world
        td.all_gather_object(rng, rng_state())
    if not dist.main:
        return
    state = {"scheduler": scheduler.state_dict(), "rng": rng, "step": step,
             "tokens_seen": tokens_seen}
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tmp = path / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path / STATE_FILE)  # last: its presence marks completeness


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, scaler: Any,
                    dist: Dist) -> dict[str, Any]:
    """Restore model, optimizer, scheduler, loss scaler and this rank's RNG from ``path``;
    return the trainer state (``step``, ``tokens_seen``)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if not (path / DCP_DIR).is_dir():
        raise TrainerError(f"{path}: no {DCP_DIR}/ (a checkpoint from an older trainer); "
                           "start a new --out, or finish the run with the version that wrote it")
    sd = _state_dicts(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load(sd, checkpoint_id=str(path / DCP_DIR))
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"],
                   options=StateDictOptions(strict=False))  # strict=False: frozen base absent
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])  # fp16: continue at the same loss scale
    # Same world size: each rank continues its own RNG stream; otherwise rank 0's.
    set_rng_state(state["rng"][dist.rank] if dist.rank < len(state["rng"]) else state["rng"][0])
    return state


def data_order_note(path: Path, rows_per_step: int) -> str | None:
    """A warning when the resumed run consumes another number of rows per step than the run
    that wrote ``path`` (batch_size x grad_accum x world size): the step count carries over,
    the data order from there on is not the original run's."""
    meta = json.loads((path / META_FILE).read_text())
    cfg = meta.get("config", {})
    was = cfg.get("batch_size", 1) * cfg.get("grad_accum", 1) * meta.get("world_size", 1)
    if was == rows_per_step:
        return None
    return (f"note: {path.name} was written at {was} rows per step (batch_size x grad_accum x "
            f"ranks), this run takes {rows_per_step}; keep the product equal to continue the "
            "same data order")


def save_pretrained(path: Path, model: Any, tokenizer: Any, meta: dict[str, Any]) -> None:
    """Write an ordinary HF folder (or PEFT adapter) + tokenizer + ``selfevo_train.json``."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


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
