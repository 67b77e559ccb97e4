"""Data parallelism under torchrun: replicate the model (DDP) or shard it (FSDP2).

``TrainConfig.shard`` chooses:

- ``ddp`` (default): every rank holds the whole model, gradients are all-reduced
  (``DistributedDataParallel``); on one process there is nothing to wrap. For models whose
  weights, gradients and AdamW state fit one GPU.
- ``fsdp``: PyTorch's own ``fully_shard`` (FSDP2) on each decoder layer, then on the root.
  Each rank keeps 1/S of every parameter, of its gradient and of its optimizer state (S = the
  shard group: all ranks, or ``shard_group`` ranks with HSDP, replicated across groups);
  a layer's full weights exist only while it runs. Mixed precision is FSDP's own policy (bf16
  parameters for compute, fp32 sharded master weights, fp32 gradient reduction), not autocast.
- ``none``: a single process, no wrapper.

Building an FSDP model never puts a full copy on every rank: all ranks build the modules on
the meta device and shard them, and only rank 0 reads the weights (on CPU), then broadcasts
them tensor by tensor, each rank keeping its shard (``set_model_state_dict(...,
broadcast_from_rank0=True)``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.model import load_model


@dataclass
class Dist:
    """Process group facts: rank, world size, device (and the FSDP mesh shape, if any)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    mesh: list[int] = field(default_factory=list)
    own_group: bool = False  # a one-process group made for FSDP: torn down by leave()

    @property
    def main(self) -> bool:
        """True on the process that logs and saves."""
        return self.rank == 0


def init_distributed(shard: str = "ddp", cpu_offload: bool = False) -> Dist:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on GPU).

    ``shard="fsdp"`` on a single process (no torchrun) gets a one-process group, so FSDP's
    mixed precision and CPU offload work on one GPU too. With ``cpu_offload`` on GPUs the
    group also has gloo for CPU tensors: the gradient norm of offloaded (CPU) gradient shards
    is all-reduced there (NCCL has no CPU backend).
    """
    import torch
    import torch.distributed as td

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    if shard == "none" and world > 1:
        raise TrainerError("shard=none trains on one process; under torchrun use --shard ddp or fsdp")
    backend = ("cpu:gloo,cuda:nccl" if cpu_offload else "nccl") if cuda else "gloo"
    own = False
    if world > 1 and not td.is_initialized():
        td.init_process_group(backend)
    elif shard == "fsdp" and not td.is_initialized():
        td.init_process_group(backend, store=td.HashStore(), rank=0, world_size=1)
        own = True
    return Dist(rank=rank, world=world, local_rank=local, device=device, own_group=own)


def leave(dist: Dist) -> None:
    """Wait for every rank; destroy the one-process group :func:`init_distributed` made.

    (torchrun's group is left to the caller: ``python -m trainer`` destroys it on success.)
    """
    import torch.distributed as td

    if dist.world > 1:
        td.barrier()
    elif dist.own_group and td.is_initialized():
        td.destroy_process_group()


def all_reduce_sum(x: Any, dist: Dist) -> Any:
    """Sum a tensor over ranks (no-op on one process)."""
    if dist.world > 1:
        import torch.distributed as td

        td.all_reduce(x, op=td.ReduceOp.SUM)
    return x


# --------------------------------------------------------------------------- building


def build_model(cfg: TrainConfig, dist: Dist) -> Any:
    """The model to train on this rank: loaded, then wrapped for ``cfg.shard``."""
    if cfg.shard == "fsdp":
        return fsdp_model(cfg, dist)
    model = load_model(cfg, dist.device)
    if dist.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    # Gradients as views into DDP's buckets: one copy of the gradients, not two.
    return DDP(model, device_ids=[dist.local_rank] if dist.device.startswith("cuda") else None,
               gradient_as_bucket_view=True)


def unwrap(model: Any) -> Any:
    """The trained module itself (DDP's ``.module``; FSDP wraps in place)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return model.module if isinstance(model, DDP) else model


def device_mesh(cfg: TrainConfig, dist: Dist) -> Any:
    """A 1-D ``shard`` mesh over all ranks, or with ``shard_group`` G a 2-D (``replicate``,
    ``shard``) mesh: shard within groups of G consecutive ranks (one node), replicate across."""
    from torch.distributed.device_mesh import init_device_mesh

    kind = "cuda" if dist.device.startswith("cuda") else "cpu"
    group = cfg.shard_group or dist.world
    if dist.world % group:
        raise TrainerError(f"shard_group={group} does not divide the {dist.world} ranks; use the "
                           "number of GPUs per node (torchrun --nproc-per-node)")
    if group == dist.world:
        return init_device_mesh(kind, (dist.world,), mesh_dim_names=("shard",))
    return init_device_mesh(kind, (dist.world // group, group),
                            mesh_dim_names=("replicate", "shard"))


def mixed_precision(cfg: TrainConfig, cuda: bool) -> Any:
    """FSDP's policy: bf16 compute with fp32 reduction, or plain fp32.

    bf16 for ``precision=bf16``, and for ``auto`` on a GPU that supports it (fp32 on CPU, as
    without FSDP). The sharded master weights and the optimizer stay fp32 either way.
    """
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    bf16 = cfg.precision == "bf16" or (
        cfg.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    if bf16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def decoder_layers(model: Any) -> list[Any]:
    """The model's repeated blocks (transformers names their class in ``_no_split_modules``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise TrainerError(f"{type(base).__name__}: no decoder layers found to shard "
                           "(the model class lists none in _no_split_modules); use --shard ddp")
    return layers


def fsdp_model(cfg: TrainConfig, dist: Dist) -> Any:
    """Meta-built, sharded layer by layer then at the root, weights broadcast from rank 0."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    cuda = dist.device.startswith("cuda")
    mesh = device_mesh(cfg, dist)
    dist.mesh = list(mesh.shape)
    kw = {"mesh": mesh, "mp_policy": mixed_precision(cfg, cuda),
          "offload_policy": CPUOffloadPolicy(pin_memory=cuda) if cfg.cpu_offload else OffloadPolicy()}
    model = load_model(cfg, dist.device, meta=True)
    for layer in decoder_layers(model):
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    if not cfg.cpu_offload:
        model.to_empty(device=dist.device)  # each rank's shards, uninitialised until loaded
    # Under offload the shards stay on meta: each tensor is broadcast over the process
    # group's device (NCCL cannot send CPU tensors), then its shard moves to CPU and replaces
    # the meta parameter.
    source = load_model(cfg, "cpu") if dist.main else None  # the only full copy: rank 0's CPU
    full = source.state_dict() if source is not None else {}
    set_model_state_dict(model, full, options=StateDictOptions(
        full_state_dict=True, broadcast_from_rank0=True, cpu_offload=cfg.cpu_offload))
    _broadcast_buffers(model, source, dist)
    del source, full
    if cuda:
        torch.cuda.empty_cache()
    return model


def _broadcast_buffers(model: Any, source: Any, dist: Dist) -> None:
    """Give every rank rank 0's buffers (rotary frequencies: not in the state dict), on the
    compute device (also under CPU offload: they are used by the forward)."""
    import torch
    import torch.distributed as td

    real = dict(source.named_buffers()) if source is not None else {}
    for name, buf in list(model.named_buffers()):
        value = real[name].to(dist.device) if dist.main else torch.empty_like(buf, device=dist.device)
        if dist.world > 1:
            td.broadcast(value, src=0)
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        persistent = attr not in module._non_persistent_buffers_set
        module.register_buffer(attr, value, persistent=persistent)


# --------------------------------------------------------------------------- the step


def no_sync(model: Any, last: bool) -> Any:
    """Context for one micro-batch's backward in an accumulation window.

    DDP all-reduces only after the window's last micro-batch. FSDP reduce-scatters after
    every micro-batch: skipping it would keep whole unsharded gradients across micro-batches,
    the memory FSDP exists to save.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not last and isinstance(model, DDP):
        return model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm(model: Any, max_norm: float) -> float:
    """The global gradient norm (over all ranks' shards), clipped to ``max_norm`` if > 0."""
    import torch
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(norm, DTensor):  # FSDP: a partial sum on each rank until reduced
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)


# --------------------------------------------------------------------------- facts and export


def parameter_counts(model: Any, dist: Dist) -> dict[str, Any]:
    """How many parameter elements the model has and how many each rank holds."""
    from torch.distributed.tensor import DTensor

    total = local = 0
    for p in model.parameters():
        total += p.numel()
        local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    per_rank = [local]
    if dist.world > 1:
        import torch.distributed as td

        per_rank = [0] * dist.world
        td.all_gather_object(per_rank, local)
    return {"params": total, "params_per_rank": per_rank}


def gathered_model(model: Any, cfg: TrainConfig, dist: Dist) -> Any:
    """The trained model as an ordinary module on rank 0 (``None`` on the other ranks).

    DDP/none: the model itself. FSDP: every rank takes part in gathering the trained
    parameters (LoRA adapters, or all weights) into a full state dict on rank 0's CPU, which
    rank 0 loads into a plain model: the base plus fresh adapters (LoRA; the base is needed
    for ``--merge``), or modules built on the meta device that take the gathered tensors as
    they are (full: no second copy).
    """
    if cfg.shard != "fsdp":
        return unwrap(model) if dist.main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=not cfg.full))
    if not dist.main:
        return None
    if cfg.full:
        plain = load_model(cfg, "cpu", meta=True)
        plain.load_state_dict(state, assign=True)
        plain.tie_weights()
        return plain
    plain = load_model(cfg, "cpu")
    result = plain.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise TrainerError(f"gathered adapter weights do not fit the model: {result.unexpected_keys[:3]}")
    return plain
