"""What a run costs before it runs: memory per GPU, and FLOPs per token (for MFU).

Everything is arithmetic on the model's ``config.json`` (no weight is read), so a plan for a
70B model takes a folder holding only its config. Shapes follow the Llama family
(``LlamaForCausalLM``, Mistral, Qwen2, SmolLM): per decoder layer the projections q, k, v, o
and a gated MLP (gate, up, down), two RMSNorms; embeddings and an LM head (tied or not).

Memory per GPU (bytes; N parameters, n of them trained, S = ranks one parameter is sharded
over: 1 for ddp/none, the world size or ``shard_group`` for fsdp; c = bytes per element of
the compute dtype: 2 for bf16, 4 for fp32)::

    parameters     ddp/none: 4N full; LoRA: 2N on GPU in bf16 (4N in fp32) + 4n adapters
                   fsdp: 4(N+n)/S fp32 master shards, plus c x (2 decoder layers (the one
                   running and the one prefetched) + embeddings, head and final norm, which
                   the root keeps unsharded from forward to backward)
                   ddp + bf16 autocast, full: + 2N (the bf16 weight copies autocast keeps
                   for the backward)
    gradients      4n/S  (n = N for full fine-tuning; fp32, reduced in fp32). Counted whole:
                   they coexist with the activations from an accumulation window's second
                   micro-batch on (with grad_accum 1 the real peak is lower by up to this)
    optimizer      8n/S  (AdamW: two fp32 moments)
    activations    t x c x [L x a + 2h + 2d]   t = tokens per micro-batch (batch_size x
                   pack_len, or x max_len unpacked), L layers, h hidden, d head dim, and per
                   layer and token a = 9h + 2kv + 4i + heads + 2 (full fine-tuning; kv =
                   kv_heads x d, i = MLP width); LoRA saves 2h less, plus r per adapted
                   projection, plus with dropout a copy of each adapted input and its mask.
                   Gradient checkpointing keeps only each layer's input: t x c x [L x h + 2h + 2d]
    logits         max(p x V x 12, checkpointing: t x c x a)   p positions with a loss (at
                   most t), V vocabulary: three fp32 vocabulary-wide rows per position (the
                   log-softmax, its gradient, a temporary) at the loss; with checkpointing the
                   layer recomputed in the backward may be the larger transient
    cpu_offload    parameters' shards, gradients and optimizer state move to CPU memory

The per-layer activation count ``a`` was measured on CPU in fp32 by recording the tensors
autograd saves (transformers' Llama layer with per-example SDPA, which stores no T x T
matrix); ``tests/test_trainer_plan.py`` checks the whole plan against the peak memory
torch's ``MemTracker`` measures for a training step of the tiny model. The GPU/bf16 figures
reuse the same counts at 2 bytes per element; they are not measured (no GPU was available).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.errors import TrainerError

#: Projections per decoder layer and their (input, output) sizes, by peft target name.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Headroom the plan leaves on a GPU: CUDA context, NCCL buffers, allocator fragmentation.
HEADROOM = 0.10
GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-shaped causal LM."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a transformers ``config.json`` dict."""
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            return cls(
                vocab=int(config["vocab_size"]), hidden=hidden,
                layers=int(config["num_hidden_layers"]), heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                intermediate=int(config["intermediate_size"]),
                tied=bool(config.get("tie_word_embeddings", False)),
                attention_bias=bool(config.get("attention_bias", False)),
                mlp_bias=bool(config.get("mlp_bias", False)),
            )
        except KeyError as exc:
            raise TrainerError(f"config.json has no {exc.args[0]}: not a Llama-shaped model the "
                               "plan knows") from None

    @classmethod
    def from_path(cls, base: str | Path) -> ModelShape:
        """From ``BASE/config.json`` (a folder with only the config is enough)."""
        path = Path(base) / "config.json"
        if not path.is_file():
            raise TrainerError(f"{path} not found: --base must be a local model folder (its "
                               "config.json is all the plan reads)")
        return cls.from_config(json.loads(path.read_text()))

    def projections(self) -> dict[str, tuple[int, int]]:
        """(input, output) features of each projection in one decoder layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, \
            self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer."""
        p = self.projections()
        n = sum(a * b for a, b in p.values()) + 2 * self.hidden  # + the two norms
        if self.attention_bias:
            n += sum(p[k][1] for k in ("q_proj", "k_proj", "v_proj", "o_proj"))
        if self.mlp_bias:
            n += sum(p[k][1] for k in ("gate_proj", "up_proj", "down_proj"))
        return n

    @property
    def embed_params(self) -> int:
        """The input embedding."""
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """The LM head (0 when tied to the embedding)."""
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def params(self) -> int:
        """All parameters."""
        return self.layers * self.layer_params + self.hidden + self.embed_params + self.head_params


def lora_targets(cfg: TrainConfig) -> list[str]:
    """The projections ``cfg.lora_targets`` adapts (``all-linear``: all seven, not the head)."""
    if cfg.lora_targets == "all-linear":
        return list(PROJECTIONS)
    names = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    return [p for p in PROJECTIONS if p in names]


def lora_params(shape: ModelShape, cfg: TrainConfig) -> int:
    """Trainable LoRA parameters: r x (in + out) per adapted projection and layer."""
    p = shape.projections()
    return shape.layers * sum(cfg.lora_r * sum(p[t]) for t in lora_targets(cfg))


# --------------------------------------------------------------------------- memory


@dataclass
class MemoryPlan:
    """Estimated bytes per GPU, component by component."""

    rows: list[tuple[str, float, str]] = field(default_factory=list)  # name, bytes, how
    cpu_bytes: float = 0.0  # per rank, with cpu_offload
    gpu_memory_gib: float = 0.0

    @property
    def total(self) -> float:
        """Bytes on the GPU."""
        return sum(b for _, b, _ in self.rows)

    @property
    def fits(self) -> bool:
        """True when the total leaves :data:`HEADROOM` of the GPU free."""
        return self.total <= (1 - HEADROOM) * self.gpu_memory_gib * GIB

    def component(self, name: str) -> float:
        """Bytes of one row."""
        return next(b for n, b, _ in self.rows if n == name)


def compute_bytes(cfg: TrainConfig, cuda: bool) -> int:
    """Bytes per element of the compute dtype (activations, FSDP's unsharded weights)."""
    if cfg.precision in ("bf16", "fp16") or (cfg.precision == "auto" and cuda):
        return 2
    return 4


def activation_elements(shape: ModelShape, cfg: TrainConfig, c: int) -> tuple[float, float]:
    """Elements per token, in units of ``c`` bytes: (kept by autograd through the backward,
    one decoder layer's worth) — see the module docstring."""
    h, d, kv = shape.hidden, shape.head_dim, shape.kv_heads * shape.head_dim
    q = shape.heads * d
    layer = 6 * h + 3 * q + 2 * kv + 4 * shape.intermediate + shape.heads + 2
    if not cfg.full:
        targets = lora_targets(cfg)
        layer += -2 * h + cfg.lora_r * len(targets)
        if cfg.lora_dropout > 0:  # dropout output + its bool mask (1 byte) per adapted input
            layer += sum(shape.projections()[t][0] for t in targets) * (1 + 1 / c)
    outside = 2 * h + 2 * d  # final norm in/out, rotary cos/sin
    if cfg.gradient_checkpointing:  # each layer's input; its activations are recomputed
        return shape.layers * h + outside, layer
    return shape.layers * layer + outside, layer


def memory_plan(cfg: TrainConfig, shape: ModelShape, world: int, *, cuda: bool = True,
                gpu_memory_gib: float = 80.0, trained_fraction: float = 1.0) -> MemoryPlan:
    """Per-GPU memory of ``cfg`` on ``world`` ranks (see the module docstring for the terms).

    ``trained_fraction``: share of positions with a loss (the LM head runs only there); 1.0,
    the default, is the upper bound.
    """
    fsdp = cfg.shard == "fsdp"
    if fsdp and world % (cfg.shard_group or world):
        raise TrainerError(f"shard_group={cfg.shard_group} does not divide world size {world}")
    s = (cfg.shard_group or world) if fsdp else 1
    c = compute_bytes(cfg, cuda)
    n_all = shape.params
    n_train = n_all if cfg.full else lora_params(shape, cfg)
    plan = MemoryPlan(gpu_memory_gib=gpu_memory_gib)
    sharded = f"/{s} ranks" if s > 1 else ""
    if fsdp:
        params = 4 * (n_all + (0 if cfg.full else n_train)) / s
        how = f"fp32 master shards{sharded}"
    elif cfg.full:
        params, how = 4 * n_all, "fp32"
    else:
        base = 2 if (cuda and cfg.precision != "fp32") else 4
        params, how = base * n_all + 4 * n_train, f"base {'bf16' if base == 2 else 'fp32'} + fp32 adapters"
    states = {"parameters": (params, how),
              "gradients": (4 * n_train / s, f"fp32{sharded}"),
              "optimizer": (8 * n_train / s, f"AdamW 2 x fp32{sharded}")}
    if cfg.cpu_offload:
        plan.cpu_bytes = sum(b for b, _ in states.values())
        states = {k: (0.0, "offloaded to CPU") for k in states}
    plan.rows += [(k, b, how) for k, (b, how) in states.items()]
    if fsdp:
        gathered = 2 * shape.layer_params + shape.embed_params + shape.head_params + shape.hidden
        plan.rows.append(("unsharded weights", c * gathered,
                          "2 layers + embeddings/head, compute dtype"))
    elif cfg.full and c == 2:
        plan.rows.append(("autocast copies", 2.0 * n_all, "bf16 weight copies for the backward"))
    tokens = cfg.batch_size * ((cfg.pack_len or cfg.max_len) if cfg.pack else cfg.max_len)
    kept, layer = activation_elements(shape, cfg, c)
    plan.rows.append(("activations", tokens * c * kept, f"{tokens} tokens/micro-batch"
                      + (", layer inputs only (checkpointing)" if cfg.gradient_checkpointing else "")))
    positions = tokens * trained_fraction
    logits = positions * shape.vocab * 12
    recompute = tokens * c * layer if cfg.gradient_checkpointing else 0.0
    plan.rows.append(("logits", max(logits, recompute),
                      f"{positions:.0f} positions x {shape.vocab} vocab x 3 fp32"
                      if logits >= recompute else "one layer recomputed in the backward"))
    return plan


def render_plan(plan: MemoryPlan, cfg: TrainConfig, shape: ModelShape, world: int) -> str:
    """The plan as a small text table with its verdict."""
    n_train = shape.params if cfg.full else lora_params(shape, cfg)
    lines = [
        f"model: {shape.params / 1e9:.2f}B parameters ({shape.layers} layers, hidden "
        f"{shape.hidden}, vocab {shape.vocab}); training {n_train / 1e6:.1f}M "
        f"({'full' if cfg.full else f'LoRA r={cfg.lora_r}'})",
        f"run: {world} GPU(s), shard={cfg.shard}"
        + (f" (HSDP groups of {cfg.shard_group})" if cfg.shard_group else "")
        + f", precision={cfg.precision}, gradient checkpointing "
        f"{'on' if cfg.gradient_checkpointing else 'off'}"
        + (", cpu offload" if cfg.cpu_offload else ""),
        "",
        f"{'per GPU':<18} {'GiB':>8}  how",
    ]
    lines += [f"{name:<18} {b / GIB:>8.2f}  {how}" for name, b, how in plan.rows]
    lines.append(f"{'total':<18} {plan.total / GIB:>8.2f}")
    if plan.cpu_bytes:
        lines.append(f"{'CPU per rank':<18} {plan.cpu_bytes / GIB:>8.2f}  offloaded states")
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append(f"{verdict} in {plan.gpu_memory_gib:g} GiB (keeping {HEADROOM:.0%} free)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- FLOPs


def train_flops(shape: ModelShape, *, tokens: int, trained_tokens: int, sum_sq_lengths: int,
                full: bool, lora: int = 0) -> float:
    """Model FLOPs of one training pass (forward + backward) over real (unpadded) tokens.

        k x N_body x tokens + k x V x h x trained_tokens + 6 x L x (heads x d) x sum(s_i^2)

    N_body: the decoder layers' projection weights (norms and biases are elementwise work;
    the embedding is a lookup; the head is counted apart); k = 6 for full
    fine-tuning (forward 2, input gradients 2, weight gradients 2) and 4 for LoRA (frozen
    weights get no weight gradient; its adapters add 6 x lora x tokens). The LM head is
    counted only at positions with a loss (an SFT run needs no logits elsewhere: stricter than
    the usual 6N, which counts it everywhere). Attention: causal, each example s_i attending
    within itself, 2 matmuls x s^2/2 x heads x d x 2 FLOPs forward, x3 with the backward —
    half of PaLM's 12 x L x h x s per token, which counts the masked half too.
    """
    k = 6 if full else 4
    body = shape.layers * sum(a * b for a, b in shape.projections().values())
    head = shape.vocab * shape.hidden
    attn = 6 * shape.layers * shape.heads * shape.head_dim * sum_sq_lengths
    return k * body * tokens + k * head * trained_tokens + attn + (0 if full else 6 * lora * tokens)


def mfu(flops: float, seconds: float, peak_tflops: float, gpus: int = 1) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the GPUs' dense peak."""
    return flops / seconds / (peak_tflops * 1e12 * gpus)


def plan_report(cfg: TrainConfig, world: int, gpu_memory_gib: float) -> tuple[str, bool]:
    """``--plan``: the rendered plan for ``cfg.base``'s config on ``world`` GPUs, and whether
    it fits."""
    if world < 1:
        raise TrainerError(f"--world-size {world}: must be at least 1")
    try:
        cfg.check()
    except ValueError as exc:
        raise TrainerError(str(exc)) from None
    shape = ModelShape.from_path(cfg.base)
    plan = memory_plan(cfg, shape, world, cuda=True, gpu_memory_gib=gpu_memory_gib)
    return render_plan(plan, cfg, shape, world), plan.fits
