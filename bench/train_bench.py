"""Trainer throughput: selfevo's packed trainer vs transformers.Trainer and TRL's SFTTrainer.

Same export (variable-length meta-skill records), same model, same LoRA and optimizer
hyper-parameters, same examples and loss masks: every contender gets selfevo's token ids and
trains exactly selfevo's trained tokens (feedback f and refinement r-hat, each with its
end-of-turn), so only the batching and the loop differ. Contenders:

* selfevo: packed rows, per-example (varlen) attention, LM head only at trained positions;
* transformers.Trainer, batches padded to the longest (``DataCollatorForSeq2Seq``);
* TRL ``SFTTrainer`` (when ``trl`` is installed: ``pip install -e '.[bench]'``) given the ids
  and an ``assistant_masks`` column (TRL's per-token loss-mask column, 1 exactly on selfevo's
  trained tokens), three ways: padded batches, ``padding_free=True`` (a batch flattened into
  one sequence) and ``packing=True`` (best-fit-decreasing rows of ``pack_len`` tokens).
  TRL's own tokenisation cannot express the meta-skill mask: ``assistant_only_loss`` would
  also train the initial answer r, and a prompt-completion split would also train the
  refine instruction between f and r-hat (the bench prints how many tokens each would train).

Each run is its own subprocess (clean peak memory). Reported: trained tokens/s (targets with a
label, counted from the batches each trainer actually sees / summed optimizer-step wall
time), padding share, peak memory (CPU: max RSS; GPU: max allocated), and on GPU the MFU.

    flock /tmp/selfevo-bench.lock .venv/bin/python bench/train_bench.py           # CPU, LoRA
    flock /tmp/selfevo-bench.lock .venv/bin/python bench/train_bench.py --full    # CPU, full
    .venv/bin/python bench/train_bench.py --gpu                                   # 0.5B, GPU

``--gpu`` uses a ~0.5B-parameter Llama config (random init) with LoRA and full fine-tuning
and reports MFU against the bf16 dense peak (H100 SXM: 989 TFLOP/s; set --peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The embedding is padded to 4096 rows so the LM head is ~25% of the FLOPs, about the share
# it has in SmolLM2-135M (49k vocabulary, 576 hidden, 30 layers).
CPU_MODEL = dict(vocab_size=1024, model_vocab=4096, hidden=256, layers=4, heads=8, kv_heads=4,
                 intermediate=768)
# ~0.5B parameters: 32 layers x 12.9M + 2 x 32000 x 1024 embeddings.
GPU_MODEL = dict(vocab_size=1024, model_vocab=32000, hidden=1024, layers=32, heads=16,
                 kv_heads=16, intermediate=2816, max_positions=4096)


def prepare(work: Path, n: int, gpu: bool) -> tuple[Path, Path]:
    """Build the model folder and the export once; both trainers read the same files."""
    from trainer.testing.synthetic import synthetic_records, write_export
    from trainer.testing.tiny import build_tiny_model

    model = build_tiny_model(work / "model", **(GPU_MODEL if gpu else CPU_MODEL))
    recs = synthetic_records(n, seed=7, kinds=("meta",))
    export = write_export(work / "export", recs, name="bench-meta")
    return model, export


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
    """selfevo's trainer: packed rows of ``pack_len`` tokens."""
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
    """A TrainerCallback appending each optimizer step's wall time to ``times``."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    return Clock()


def count_batches(trainer: Any) -> dict[str, int]:
    """Token slots and trained targets over one epoch of the trainer's batches.

    Causal LMs in transformers shift labels inside the model, so a row's trained targets are
    its labels at positions >= 1 (padding-free collators mask each sequence's first label).
    """
    slots = trained = 0
    for b in trainer.get_train_dataloader():
        slots += int(b["input_ids"].numel())
        trained += int((b["labels"][:, 1:] != -100).sum())
    return {"padded_tokens": slots, "trained_tokens": trained}


def run_hf(args, model_dir: Path, export: Path, out: Path) -> dict:
    """transformers.Trainer, batches of ``hf_batch`` examples padded to the longest."""
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
    )
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collator,
                      callbacks=[step_clock(times)])
    counts = count_batches(trainer)
    result = trainer.train()
    return {"steps": len(times), **counts,
            "tokens": sum(len(e.input_ids) for e in examples), "seconds": sum(times),
            "final_loss": result.training_loss}


LABELS = {
    "selfevo": "selfevo (packed)",
    "hf": "transformers.Trainer (padded)",
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
    counts = count_batches(trainer)
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
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    out = Path(tempfile.mkdtemp(prefix=f"{args.child}-", dir=work))
    fn = run_trl if args.child in TRL_MODES else {"selfevo": run_selfevo, "hf": run_hf}[args.child]
    res = fn(args, work / "model", work / "export", out)
    res["peak_mem_gb"] = peak_memory_gb()
    print("RESULT " + json.dumps(res))


def params_of(model_dir: Path) -> int:
    """Parameter count of the bench model (for MFU)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with __import__("torch").device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in m.parameters())


def main() -> None:
    """Prepare data once, run each trainer in a subprocess, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=0, help="records (default 120 CPU, 4000 GPU)")
    ap.add_argument("--gpu", action="store_true", help="0.5B model on the GPU, LoRA and full")
    ap.add_argument("--full", action="store_true", help="full fine-tuning (CPU mode)")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--pack-len", type=int, default=0, help="selfevo row length (default 8x mean)")
    ap.add_argument("--hf-batch", type=int, default=8, help="examples per padded batch")
    # One thread per trainer: on a shared 2-core machine, 2 threads per process collapse as
    # soon as anything else runs (OpenMP barriers wait on a descheduled thread).
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per trainer")
    ap.add_argument("--repeats", type=int, default=2, choices=[1, 2, 3], help="runs per trainer")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak for MFU")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--trainers", default="",
                    help="comma-separated subset of " + ",".join(LABELS) + " (default: all; the "
                    "TRL ones only when trl is installed)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        child(args)
        return
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("--gpu: no CUDA device here; run on a GPU machine")
    n = args.n or (4000 if args.gpu else 120)
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    model, export = prepare(work, n, args.gpu)
    tok, examples, stats = examples_for(export, model, args.max_len)
    mean_len = stats.tokens / max(stats.examples, 1)
    pack_len = args.pack_len or max(args.max_len, int(mean_len * args.hf_batch))
    print(f"data: {stats.examples} meta examples, {stats.tokens} tokens "
          f"({stats.trained_tokens} trained), length mean {mean_len:.0f}, "
          f"min {min(len(e.input_ids) for e in examples)}, "
          f"max {max(len(e.input_ids) for e in examples)}; pack_len {pack_len}, "
          f"hf batch {args.hf_batch}")
    if any(x.startswith("trl") for x in default_trainers()):
        try:
            print(trl_native_counts(export, model, args.max_len, work) + f" (selfevo's mask and "
                  f"every contender here: {stats.trained_tokens})", flush=True)
        except Exception as e:  # informational only: never cost the measurements
            print(f"TRL's own tokenisation: not counted ({type(e).__name__}: {e})")
    modes = [("lora", False), ("full", True)] if args.gpu else [("full" if args.full else "lora",
                                                                  args.full)]
    n_params = params_of(model) if args.gpu else 0
    names = [x.strip() for x in args.trainers.split(",") if x.strip()] or default_trainers()
    unknown = sorted(set(names) - set(LABELS))
    if unknown or "hf" not in names:
        sys.exit(f"--trainers: unknown {unknown} or no 'hf' (the baseline); choose from {list(LABELS)}")
    rows = []
    failed: set[str] = set()
    for mode, full in modes:
        # ABBA order (A B C, C B A), best of each: a burst of load from other processes on a
        # shared machine hits one run, not one trainer.
        best: dict[str, dict] = {}
        order = (names + names[::-1] + names)[: len(names) * args.repeats]
        for name in order:
            cmd = [sys.executable, __file__, "--child", name, "--work", str(work),
                   "--max-len", str(args.max_len), "--pack-len", str(pack_len),
                   "--hf-batch", str(args.hf_batch), "--threads", str(args.threads)]
            if full:
                cmd.append("--full")
            if args.gradient_checkpointing:
                cmd.append("--gradient-checkpointing")
            if name in failed:
                continue
            proc = subprocess.run(cmd, capture_output=True, text=True)
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
        rows += [(mode, name, best[name]) for name in names if name in best]
    base = {mode: r["tps"] for mode, name, r in rows if name == "hf"}
    print(f"\n{'mode':<5} {'trainer':<31} {'steps':>5} {'trained':>7} {'padding':>7} "
          f"{'trained tok/s':>13} {'vs padded':>9} {'peak mem GB':>11} {'final loss':>10}"
          + ("  MFU" if args.gpu else ""))
    for mode, name, r in rows:
        label = LABELS[name]
        pad_share = 1 - r["tokens"] / r["padded_tokens"]
        mfu = ""
        if args.gpu:
            # Model FLOPs per processed token: 6N full; LoRA skips weight gradients (~4N).
            # Attention FLOPs are not counted, so this is a slight lower bound.
            flops = (6 if mode == "full" else 4) * n_params * r["tokens"] / r["seconds"]
            mfu = f"  {100 * flops / (args.peak_tflops * 1e12):.1f}%"
        print(f"{mode:<5} {label:<31} {r['steps']:>5} {r['trained_tokens']:>7} {pad_share:>7.0%} "
              f"{r['tps']:>13.0f} {r['tps'] / base[mode]:>8.2f}x {r['peak_mem_gb']:>11.2f} {r['final_loss']:>10.3f}{mfu}")


if __name__ == "__main__":
    main()
