"""Trainer throughput: selfevo's packed trainer vs transformers.Trainer and TRL's SFTTrainer.

Same export (variable-length meta-skill records), same model, same LoRA and optimizer
hyper-parameters, same examples and loss masks: every contender gets selfevo's token ids and
trains exactly selfevo's trained tokens (feedback f and refinement r-hat, each with its
end-of-turn), so only the batching and the loop differ. Contenders:

* selfevo: packed rows, per-example (varlen) attention, LM head only at trained positions;
* transformers.Trainer, batches padded to the longest (``DataCollatorForSeq2Seq``), sampled
  at random (``hf``) and — its documented best practice against padding — grouped by length
  (``hf-grouped``: ``train_sampling_strategy="group_by_length"``, the former
  ``group_by_length=True``), which is the baseline of the ratio column;
* TRL ``SFTTrainer`` (when ``trl`` is installed: ``pip install -e '.[bench]'``) given the ids
  and an ``assistant_masks`` column (TRL's per-token loss-mask column, 1 exactly on selfevo's
  trained tokens), three ways: padded batches, ``padding_free=True`` (a batch flattened into
  one sequence) and ``packing=True`` (best-fit-decreasing rows of ``pack_len`` tokens).
  TRL's own tokenisation cannot express the meta-skill mask: ``assistant_only_loss`` would
  also train the initial answer r, and a prompt-completion split would also train the
  refine instruction between f and r-hat (the bench prints how many tokens each would train).

Timing boundaries are the same for everyone: a step is the wall time from the end of the
previous optimizer step (for the first: the start of the epoch) to the end of this one, so it
includes fetching and collating the batch (selfevo: choosing the step's rows and building the
tensors; Trainer/TRL: the DataLoader and its collator), forward, backward, clipping, the
optimizer and the schedule, and on GPU a synchronise. Tokenisation, model loading and saving
are outside for everyone. Trained tokens/s = trained targets (counted from the batches each
trainer actually sees) / summed step times.

Each run is its own subprocess (clean peak memory). Reported: trained tokens/s, padding share,
peak memory (CPU: max RSS; GPU: max allocated), and on GPU the MFU and selfevo's memory plan
(trainer/plan.py) next to its measured peak. MFU = FLOPs / time / peak, FLOPs of one epoch by
``trainer.plan.train_flops``: 6·N·tokens (4·N for LoRA, whose frozen weights get no weight
gradient, + 6·adapters·tokens), N the decoder projections, + the LM head at positions with a
loss only, + causal attention 6·L·heads·d·Σ s² over the examples' lengths s (half of PaLM's
12·L·h·s per token). Padding is not credited to anyone.

    flock /tmp/selfevo-bench.lock .venv/bin/python bench/train_bench.py           # CPU, LoRA
    flock /tmp/selfevo-bench.lock .venv/bin/python bench/train_bench.py --full    # CPU, full
    python bench/train_bench.py --device cuda              # one GPU: ~1.1B Llama, LoRA + full
    python bench/train_bench.py --device cuda --scaling    # FSDP on 1, 2, 4, ... GPUs
    python bench/train_bench.py --device cuda --dry-run    # what it would run; no GPU needed

CPU threads: torch's default (one per core; 2 on the 2-core machine) unless ``--threads N``:
that is what a user running either trainer gets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: Bench models (random init, built from these sizes at run time: no weights are carried).
#: The tokenizer is the tiny byte-level BPE (1024 tokens); the embedding is padded to
#: ``model_vocab`` rows so the LM head costs what a real vocabulary costs.
MODELS = {
    # LM head ~25% of the FLOPs, about its share in SmolLM2-135M (49k vocab, 576 hidden).
    "cpu": dict(vocab_size=1024, model_vocab=4096, hidden=256, layers=4, heads=8, kv_heads=4,
                intermediate=768),
    # ~0.48B: 32 layers x 12.9M + 2 x 32000 x 1024 embeddings.
    "0.5b": dict(vocab_size=1024, model_vocab=32000, hidden=1024, layers=32, heads=16,
                 kv_heads=16, intermediate=2816, max_positions=4096),
    # ~1.1B, Llama-3.2-1B's body (16 layers, hidden 2048, 32 heads / 8 KV heads, MLP 8192)
    # with a 32k vocabulary.
    "1b": dict(vocab_size=1024, model_vocab=32000, hidden=2048, layers=16, heads=32,
               kv_heads=8, intermediate=8192, max_positions=4096),
}


def shape_of(name: str) -> Any:
    """The :class:`trainer.plan.ModelShape` of a bench model (what build_tiny_model builds)."""
    from trainer.plan import ModelShape

    m = MODELS[name]
    return ModelShape(vocab=max(m["model_vocab"], m["vocab_size"]), hidden=m["hidden"],
                      layers=m["layers"], heads=m["heads"], kv_heads=m["kv_heads"],
                      head_dim=m["hidden"] // m["heads"],
                      intermediate=m.get("intermediate") or 2 * m["hidden"])


def prepare(work: Path, n: int, model_name: str) -> tuple[Path, Path]:
    """Build the model folder and the export once; every contender reads the same files."""
    from trainer.testing.synthetic import synthetic_records, write_export
    from trainer.testing.tiny import build_tiny_model

    model = build_tiny_model(work / "model", **MODELS[model_name])
    recs = synthetic_records(n, seed=7, kinds=("meta",))
    export = write_export(work / "export", recs, name="bench-meta")
    return model, export


def epoch_flops(examples: list, shape: Any, full: bool) -> float:
    """Model FLOPs of one epoch over ``examples`` (trainer.plan.train_flops; LoRA r 16,
    all-linear, as every contender here)."""
    lengths = [len(e.input_ids) for e in examples]
    return _flops(shape, full, tokens=sum(lengths),
                  trained_tokens=sum(e.n_trained for e in examples),
                  sum_sq_lengths=sum(n * n for n in lengths))


def _flops(shape: Any, full: bool, **counts: int) -> float:
    from trainer.config import TrainConfig
    from trainer.plan import lora_params, train_flops

    return train_flops(shape, **counts, full=full, lora=lora_params(shape, TrainConfig(lora_r=16)))


def padded_flops(r: dict, shape: Any, full: bool) -> float | None:
    """Model FLOPs of a padded contender's epoch as it ran: every slot of its batches
    (padding included) through the body, the LM head at every slot (a Trainer computes logits
    everywhere), causal attention over each padded row. None for padding-free contenders,
    whose attention this accounting does not follow."""
    if not r.get("sum_sq_rows") or r["padded_tokens"] == r["tokens"]:
        return None
    return _flops(shape, full, tokens=r["padded_tokens"], trained_tokens=r["padded_tokens"],
                  sum_sq_lengths=r["sum_sq_rows"])


def examples_for(export: Path, model: Path, max_len: int):
    """Verified rows -> selfevo examples (ids + labels): the identical input for both trainers."""
    from transformers import AutoTokenizer

    from trainer.data import load_export
    from trainer.sequences import build_examples

    tok = AutoTokenizer.from_pretrained(model)
    examples, stats = build_examples(load_export(export).rows, tok, max_len=max_len)
    return tok, examples, stats


def peak_memory_gb() -> float:
    """Peak memory of this process: CUDA max allocated on GPU, else max RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_selfevo(args, model: Path, export: Path, out: Path) -> dict:
    """selfevo's trainer: packed rows of ``pack_len`` tokens. Its ``step_time_s`` spans
    choosing and collating the step's rows through the optimizer step (and a CUDA sync)."""
    from trainer.config import TrainConfig
    from trainer.train import train

    cfg = TrainConfig(
        data=str(export), base=str(model), out=str(out), max_len=args.max_len,
        pack=True, pack_len=args.pack_len, batch_size=1, grad_accum=1, epochs=1.0,
        lr=2e-4, lora_r=16, lora_alpha=32, lora_dropout=0.0, full=args.full, progress=False,
        warmup_ratio=0.0, seed=0, gradient_checkpointing=args.gradient_checkpointing,
    )
    res = train(cfg, log=lambda *_: None)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"steps": res.steps, "trained_tokens": sum(r["trained_tokens"] for r in rows),
            "tokens": sum(r["tokens"] for r in rows),
            "padded_tokens": sum(r["tokens"] for r in rows),  # batch_size 1: no padding
            "seconds": sum(r["step_time_s"] for r in rows), "final_loss": res.losses[-1]}


def load_bench_model(args, model_dir: Path) -> Any:
    """The bench model for the Trainer-based contenders: LoRA as selfevo's (r 16, alpha 32)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if (cuda and not args.full) else torch.float32,
        attn_implementation="sdpa")
    if not args.full:
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    return model


def step_clock(times: list[float]) -> Any:
    """A TrainerCallback appending each optimizer step's wall time to ``times``.

    From one step's end to the next (the first from the epoch's start), so the Trainer's
    DataLoader fetch and collation are inside the step, as selfevo's collation is in its own.
    """
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class Clock(TrainerCallback):
        def _now(self) -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_epoch_begin(self, *a, **k):
            self.t0 = self._now()

        def on_step_end(self, *a, **k):
            now = self._now()
            times.append(now - self.t0)
            self.t0 = now

    return Clock()


def counting(collate: Any, counts: dict[str, int]) -> Any:
    """``collate`` that also adds up the token slots and trained targets of the batches it
    builds: exactly the batches a Trainer trains on, in its own order.

    Causal LMs in transformers shift labels inside the model, so a row's trained targets are
    its labels at positions >= 1 (padding-free collators mask each sequence's first label).
    """
    counts.update(padded_tokens=0, trained_tokens=0, sum_sq_rows=0)

    def collate_and_count(features: Any) -> Any:
        b = collate(features)
        counts["padded_tokens"] += int(b["input_ids"].numel())
        rows, length = b["input_ids"].shape
        counts["sum_sq_rows"] += int(rows) * int(length) ** 2  # attention over padded rows
        counts["trained_tokens"] += int((b["labels"][:, 1:] != -100).sum())
        return b

    return collate_and_count


def run_hf(args, model_dir: Path, export: Path, out: Path) -> dict:
    """transformers.Trainer, batches of ``hf_batch`` examples padded to the longest; random
    order (``hf``) or grouped by length (``hf-grouped``)."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tok, examples, _ = examples_for(export, model_dir, args.max_len)
    data = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)}
            for e in examples]
    model = load_bench_model(args, model_dir)
    times: list[float] = []
    collator = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.hf_batch, num_train_epochs=1,
        learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0, logging_steps=10**9,
        save_strategy="no", report_to=[], seed=0, bf16=torch.cuda.is_available(),
        disable_tqdm=True, dataloader_num_workers=0,
        gradient_checkpointing=args.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if args.child == "hf-grouped" else "random",
    )
    counts: dict[str, int] = {}
    trainer = Trainer(model=model, args=targs, train_dataset=data,
                      data_collator=counting(collator, counts), callbacks=[step_clock(times)])
    result = trainer.train()
    return {"steps": len(times), **counts,
            "tokens": sum(len(e.input_ids) for e in examples), "seconds": sum(times),
            "final_loss": result.training_loss}


LABELS = {
    "selfevo": "selfevo (packed)",
    "hf": "transformers.Trainer (padded)",
    "hf-grouped": "Trainer (padded, group_by_length)",
    "trl": "TRL SFTTrainer (padded)",
    "trl-pf": "TRL SFTTrainer (padding_free)",
    "trl-pack": "TRL SFTTrainer (packing=bfd)",
}


def default_trainers() -> list[str]:
    """Every contender whose library is installed (TRL is an optional ``bench`` extra)."""
    import importlib.util

    have_trl = importlib.util.find_spec("trl") is not None
    return [n for n in LABELS if have_trl or not n.startswith("trl")]


TRL_MODES = {
    # child name -> SFTConfig overrides
    "trl": {},
    "trl-pf": {"padding_free": True, "max_length": None},  # TRL: no max_length without packing
    "trl-pack": {"packing": True, "packing_strategy": "bfd"},
}


def run_trl(args, model_dir: Path, export: Path, out: Path) -> dict:
    """TRL's SFTTrainer on selfevo's ids with an ``assistant_masks`` column (exact same mask).

    Padded: batches of ``hf_batch`` examples. padding_free: the same batches flattened into
    one sequence (position ids restart per example). packing: TRL packs examples into rows of
    ``pack_len`` tokens (best-fit decreasing), one row per step, like selfevo.
    """
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok, examples, _ = examples_for(export, model_dir, args.max_len)
    data = Dataset.from_list([
        {"input_ids": e.input_ids, "assistant_masks": [int(x != -100) for x in e.labels]}
        for e in examples])
    model = load_bench_model(args, model_dir)
    times: list[float] = []
    overrides = TRL_MODES[args.child]
    packing = overrides.get("packing", False)
    cfg = dict(
        output_dir=str(out), per_device_train_batch_size=1 if packing else args.hf_batch,
        num_train_epochs=1, learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0,
        logging_steps=10**9, save_strategy="no", report_to=[], seed=0,
        bf16=torch.cuda.is_available(), disable_tqdm=True, dataloader_num_workers=0,
        # TRL defaults gradient checkpointing on and bf16 on: match the other contenders.
        gradient_checkpointing=args.gradient_checkpointing,
        max_length=args.pack_len if packing else args.max_len,
    )
    cfg.update(overrides)
    trainer = SFTTrainer(model=model, args=SFTConfig(**cfg), train_dataset=data,
                         processing_class=tok, callbacks=[step_clock(times)])
    counts: dict[str, int] = {}
    trainer.data_collator = counting(trainer.data_collator, counts)
    result = trainer.train()
    return {"steps": len(times), **counts,
            "tokens": sum(len(e.input_ids) for e in examples), "seconds": sum(times),
            "final_loss": result.training_loss}


def trl_native_counts(export: Path, model_dir: Path, max_len: int, work: Path) -> str:
    """What TRL's own tokenisation would train on this export (printed, not benchmarked).

    prompt-completion: prompt = (p, r, feedback instruction), completion = (f, refine
    instruction, r-hat), tokenised by SFTTrainer itself. assistant_only_loss needs a template
    with ``{% generation %}`` markers (the bench tokenizer has none, and TRL refuses to patch
    it); what it would train, every assistant turn including the initial answer r, is counted
    with selfevo's turn-by-turn builder.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from trainer.data import load_export
    from trainer.sequences import SequenceBuilder

    rows = load_export(export).rows
    tok = AutoTokenizer.from_pretrained(model_dir)
    msgs = [[{"role": m["role"], "content": m["content"]} for m in r["messages"]] for r in rows]
    data = Dataset.from_list([{"prompt": m[:3], "completion": m[3:]} for m in msgs])
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir), processing_class=tok,
        train_dataset=data, args=SFTConfig(output_dir=str(work / "trl-native"), report_to=[],
                                           bf16=False, gradient_checkpointing=False,
                                           max_length=max_len))
    pc = sum(sum(x != -100 for x in lab[1:]) for lab in trainer.train_dataset["labels"])
    builder = SequenceBuilder(tok)
    every_assistant = sum(
        builder.build([{**m, "train": m["role"] == "assistant"} for m in r["messages"]]).n_trained
        for r in rows)
    return (f"TRL's own tokenisation would train: prompt-completion {pc} tokens, "
            f"assistant_only_loss {every_assistant} tokens")


def child(args) -> None:
    """Run one trainer and print its JSON result line."""
    import torch

    torch.manual_seed(0)
    if not torch.cuda.is_available() and args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    out = Path(tempfile.mkdtemp(prefix=f"{args.child}-", dir=work))
    fn = run_trl if args.child in TRL_MODES else {
        "selfevo": run_selfevo, "hf": run_hf, "hf-grouped": run_hf}[args.child]
    res = fn(args, work / "model", work / "export", out)
    res["peak_mem_gb"] = peak_memory_gb()
    print("RESULT " + json.dumps(res))


def parse_args() -> argparse.Namespace:
    """The bench's flags."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", choices=list(MODELS), default="",
                    help="bench model (default: cpu on CPU, 1b on CUDA)")
    ap.add_argument("--n", type=int, default=0, help="records (default 120 CPU, 4000 CUDA)")
    ap.add_argument("--modes", default="",
                    help="lora,full (default: lora on CPU, or full with --full; both on CUDA)")
    ap.add_argument("--full", action="store_true", help="CPU: full fine-tuning instead of LoRA")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--pack-len", type=int, default=0, help="selfevo row length (default 8x mean)")
    ap.add_argument("--hf-batch", type=int, default=8, help="examples per padded batch")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads per trainer (default 0: torch's default, one per core)")
    ap.add_argument("--repeats", type=int, default=0, choices=[0, 1, 2, 3],
                    help="runs per trainer, best kept (default 2 CPU, 1 CUDA)")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="dense bf16 peak per GPU for MFU (H100/H200 SXM: 989)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--trainers", default="",
                    help="comma-separated subset of " + ",".join(LABELS) + " (default: all; the "
                    "TRL ones only when trl is installed)")
    ap.add_argument("--scaling", action="store_true",
                    help="FSDP scaling of selfevo (full) over 1, 2, 4, ... devices instead")
    ap.add_argument("--max-gpus", type=int, default=0,
                    help="--scaling: most ranks (default: all GPUs; 2 processes on CPU)")
    ap.add_argument("--steps", type=int, default=0,
                    help="--scaling: optimizer steps per run (default 30 CUDA, 4 CPU), first 3 untimed")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the model, FLOPs, memory plan and runs, then exit (no GPU needed)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cuda = args.device == "cuda"
    args.model = args.model or ("1b" if cuda else "cpu")
    args.n = args.n or (4000 if cuda else 120)
    args.repeats = args.repeats or (1 if cuda else 2)
    args.steps = args.steps or (30 if cuda else 4)
    if not args.modes:
        args.modes = "lora,full" if cuda else ("full" if args.full else "lora")
    return args


def device_env(args) -> dict[str, str]:
    """The children's environment: on ``--device cpu`` no GPU is visible to them."""
    return {**os.environ, **({} if args.device == "cuda" else {"CUDA_VISIBLE_DEVICES": ""})}


def child_command(args, name: str, work: Path, pack_len: int, full: bool) -> list[str]:
    """The subprocess that runs one contender once."""
    cmd = [sys.executable, __file__, "--child", name, "--work", str(work),
           "--max-len", str(args.max_len), "--pack-len", str(pack_len),
           "--hf-batch", str(args.hf_batch), "--threads", str(args.threads)]
    return cmd + (["--full"] if full else []) + (
        ["--gradient-checkpointing"] if args.gradient_checkpointing else [])


def selfevo_plan_gb(args, shape: Any, full: bool, pack_len: int, trained_fraction: float) -> float:
    """selfevo's estimated peak per GPU (trainer/plan.py) for the bench's settings."""
    from trainer.config import TrainConfig
    from trainer.plan import GIB, memory_plan

    cfg = TrainConfig(full=full, lora_r=16, lora_dropout=0.0, pack_len=pack_len,
                      max_len=args.max_len, gradient_checkpointing=args.gradient_checkpointing)
    return memory_plan(cfg, shape, 1, cuda=True, trained_fraction=trained_fraction).total / GIB


def compare(args, work: Path, model: Path, examples: list, stats: Any, pack_len: int) -> None:
    """Every contender on one device: LoRA and/or full, ABBA order, best of ``repeats``."""
    names = [x.strip() for x in args.trainers.split(",") if x.strip()] or default_trainers()
    unknown = sorted(set(names) - set(LABELS))
    if unknown or "hf-grouped" not in names:
        sys.exit(f"--trainers: unknown {unknown} or no 'hf-grouped' (the baseline); choose "
                 f"from {list(LABELS)}")
    cuda = args.device == "cuda"
    shape = shape_of(args.model)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows = []
    failed: set[str] = set()
    for mode in modes:
        full = mode == "full"
        # ABBA order (A B C, C B A), best of each: a burst of load from other processes on a
        # shared machine hits one run, not one trainer.
        best: dict[str, dict] = {}
        order = (names + names[::-1] + names)[: len(names) * args.repeats]
        for name in order:
            if name in failed:
                continue
            cmd = child_command(args, name, work, pack_len, full)
            if args.dry_run:
                print("  would run: " + " ".join(cmd[1:]))
                continue
            proc = subprocess.run(cmd, capture_output=True, text=True, env=device_env(args))
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stderr[-3000:])
                if not name.startswith("trl"):
                    sys.exit(f"{name} failed")
                print(f"  {mode} {name}: FAILED (left out of the table; see the error above)")
                failed.add(name)  # an optional contender must not cost the others' results
                continue
            res = json.loads(line[0][7:])
            res["tps"] = res["trained_tokens"] / res["seconds"]
            print(f"  {mode} {name}: {res['tps']:.0f} trained tok/s", flush=True)
            if name not in best or res["tps"] > best[name]["tps"]:
                best[name] = res
        flops = epoch_flops(examples, shape, full)
        plan = selfevo_plan_gb(args, shape, full, pack_len, stats.trained_tokens / stats.tokens)
        print(f"{mode}: {flops / 1e12:.1f} TFLOP per epoch; selfevo's memory plan "
              f"{plan:.2f} GiB per GPU")
        for name in names:
            if name in best:
                best[name]["work"] = flops if name == "selfevo" else padded_flops(
                    best[name], shape, full)
        rows += [(mode, name, best[name], flops, plan) for name in names if name in best]
    if args.dry_run or not rows:
        return
    base = {mode: r["tps"] for mode, name, r, _, _ in rows if name == "hf-grouped"}
    base_work = {mode: r["work"] for mode, name, r, _, _ in rows if name == "hf-grouped"}
    print(f"\n{'mode':<5} {'trainer':<33} {'steps':>5} {'trained':>7} {'padding':>7} "
          f"{'trained tok/s':>13} {'vs grouped':>10} {'FLOPs bound':>11} {'peak mem GB':>11} "
          f"{'final loss':>10}"
          + ("    MFU  plan GB" if cuda else ""))
    for mode, name, r, flops, plan in rows:
        pad_share = 1 - r["tokens"] / r["padded_tokens"]
        extra = ""
        if cuda:
            from trainer.plan import mfu

            extra = f"  {100 * mfu(flops, r['seconds'], args.peak_tflops):5.1f}%"
            extra += f"  {plan:7.2f}" if name == "selfevo" else ""
        known = r.get("work") and base_work.get(mode)
        bound = f"{base_work[mode] / r['work']:.2f}x" if known else "-"
        print(f"{mode:<5} {LABELS[name]:<33} {r['steps']:>5} {r['trained_tokens']:>7} "
              f"{pad_share:>7.0%} {r['tps']:>13.0f} {r['tps'] / base[mode]:>9.2f}x {bound:>11} "
              f"{r['peak_mem_gb']:>11.2f} {r['final_loss']:>10.3f}{extra}")


def scaling(args, work: Path, model: Path, export: Path, examples: list, pack_len: int) -> None:
    """FSDP weak scaling: selfevo full fine-tuning, one packed row per rank and step, on
    1, 2, 4, ... ranks (torchrun); tokens/s, per device, efficiency vs 1 rank, MFU."""
    import torch

    from trainer.plan import mfu

    cuda = args.device == "cuda"
    most = args.max_gpus or (torch.cuda.device_count() if cuda else 2)
    counts = [k for k in (1, 2, 4, 8, 16, 32) if k <= most]
    shape = shape_of(args.model)
    per_token = epoch_flops(examples, shape, True) / sum(len(e.input_ids) for e in examples)
    env = {**device_env(args), "OMP_NUM_THREADS": str(args.threads or 1), "PYTHONPATH": str(REPO)}
    results = []
    for k in counts:
        out = work / f"scale-{k}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(k), "-m", "trainer", "--data", str(export), "--base",
               str(model), "--out", str(out), "--shard", "fsdp", "--full",
               "--max-steps", str(args.steps), "--pack-len", str(pack_len), "--max-len",
               str(args.max_len), "--lr", "2e-4", "--warmup-ratio", "0", "--no-progress"]
        if args.gradient_checkpointing:
            cmd.append("--gradient-checkpointing")
        if args.dry_run:
            print("  would run: " + " ".join(cmd[1:]))
            continue
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            print(proc.stderr[-3000:])
            sys.exit(f"FSDP on {k} ranks failed")
        steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        timed = steps[3:] or steps  # the first steps warm up kernels and allocators
        secs = sum(m["step_time_s"] for m in timed)
        tps = sum(m["tokens"] for m in timed) / secs
        peak = max(m.get("peak_mem_gb", 0.0) for m in timed)
        results.append((k, tps, peak))
        print(f"  fsdp x{k}: {tps:.0f} tok/s", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    if not results:
        return
    print(f"\n{'ranks':>5} {'tokens/s':>10} {'per rank':>10} {'efficiency':>10} {'MFU':>6} "
          f"{'peak mem GB':>11}")
    for k, tps, peak in results:
        eff = tps / (k * results[0][1])
        mfu_text = f"{100 * mfu(per_token * tps, 1.0, args.peak_tflops, k):5.1f}%" if cuda else "-"
        peak_text = f"{peak:.2f}" if cuda else "-"
        print(f"{k:>5} {tps:>10.0f} {tps / k:>10.0f} {eff:>10.0%} {mfu_text:>6} {peak_text:>11}")


def main() -> None:
    """Prepare data once, run each trainer in a subprocess, print the table."""
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        child(args)
        return
    import torch

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available() and not args.dry_run:
        sys.exit("--device cuda: no CUDA device here; run on a GPU machine (or add --dry-run)")
    if not cuda and args.model != "cpu" and not args.dry_run:
        sys.exit(f"--model {args.model} is a GPU model; use --device cuda")
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    try:
        # A dry run builds only the CPU model: the tokenizer (and so the data) is the same.
        model, export = prepare(work, args.n, "cpu" if args.dry_run else args.model)
        tok, examples, stats = examples_for(export, model, args.max_len)
        mean_len = stats.tokens / max(stats.examples, 1)
        pack_len = args.pack_len or max(args.max_len, int(mean_len * args.hf_batch))
        shape = shape_of(args.model)
        if cuda:
            device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
                "CUDA (dry run: no GPU here)"
        elif args.scaling:
            device = f"CPU, {args.threads or 1} thread(s) per rank"
        else:
            device = f"CPU, {args.threads or torch.get_num_threads()} thread(s) per trainer"
        print(f"device: {device}; model {args.model}: {shape.params / 1e9:.3f}B parameters "
              f"({shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab}), random init")
        print(f"data: {stats.examples} meta examples, {stats.tokens} tokens "
              f"({stats.trained_tokens} trained), length mean {mean_len:.0f}, "
              f"min {min(len(e.input_ids) for e in examples)}, "
              f"max {max(len(e.input_ids) for e in examples)}; pack_len {pack_len}, "
              f"hf batch {args.hf_batch}")
        if args.scaling:
            scaling(args, work, model, export, examples, pack_len)
            return
        if not args.dry_run and any(x.startswith("trl") for x in default_trainers()):
            try:
                print(trl_native_counts(export, model, args.max_len, work) + f" (selfevo's mask "
                      f"and every contender here: {stats.trained_tokens})", flush=True)
            except Exception as e:  # informational only: never cost the measurements
                print(f"TRL's own tokenisation: not counted ({type(e).__name__}: {e})")
        compare(args, work, model, examples, stats, pack_len)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the bench leaves no temporary folder behind


if __name__ == "__main__":
    main()
