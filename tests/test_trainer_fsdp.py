"""FSDP2 under torchrun on CPU (gloo, 2 processes, the tiny Llama): the sharded run trains what
a single process trains, holds half the parameters per rank, resumes after a killed rank,
reshards its checkpoints, and exports ordinary models that load and generate.

Tolerance: sharded and single-process losses agree to a relative 1e-5 (measured: equal to
all printed digits for LoRA; the full fine-tune's weights differ by ~1e-7, the summation
order of the reduce-scatter). A resumed run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import TrainConfig
from trainer.testing.synthetic import synthetic_records, write_export
from trainer.train import train

REPO = Path(__file__).resolve().parent.parent
STEPS, SAVE_EVERY = 4, 2
COMMON = dict(lr=3e-3, pack_len=512, max_steps=STEPS, epochs=5, warmup_ratio=0.0,
              lora_dropout=0.0, save_every=SAVE_EVERY)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """A small verified export of meta, self and qa records."""
    out = tmp_path_factory.mktemp("export")
    return write_export(out / "exp", synthetic_records(24, seed=1, kinds=("meta", "qa", "self")))


def _flags(settings: dict) -> list[str]:
    flags = []
    for key, value in settings.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(name if value else "--no-" + name[2:])
        else:
            flags += [name, str(value)]
    return flags


def torchrun(export_dir: Path, base: Path, out: Path, *, script: list[str] | None = None,
             check: bool = True, **settings) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m trainer`` (or ``script``) with ``shard=fsdp``."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    flags = _flags({"data": export_dir, "base": base, "out": out, "shard": "fsdp",
                    "progress": False, **COMMON, **settings})
    target = script if script is not None else ["-m", "trainer"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(port), *target, *flags],
        env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def single(export_dir: Path, base: Path, out: Path, **settings) -> list[dict]:
    """The same run in this process: one rank, twice the accumulation (the same rows/step)."""
    cfg = TrainConfig(data=str(export_dir), base=str(base), out=str(out), progress=False,
                      grad_accum=2, **{**COMMON, **settings})
    train(cfg, log=lambda *_: None)
    return _metrics(out)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _meta(path: Path) -> dict:
    return json.loads((path / "selfevo_train.json").read_text())


def _generates(model, tokenizer) -> None:
    import torch

    ids = tokenizer("3 + 4 =", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids.shape[1]


def _assert_half_each(meta: dict) -> None:
    par = meta["parallel"]
    assert par["shard"] == "fsdp" and par["mesh"] == [2] and meta["world_size"] == 2
    assert sum(par["params_per_rank"]) == par["params"]
    for held in par["params_per_rank"]:
        assert abs(held - par["params"] / 2) <= 0.01 * par["params"], par


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, tiny_model_dir, export_dir):
    """LoRA, merged: FSDP over 2 ranks (torchrun) and the single-process reference."""
    tmp = tmp_path_factory.mktemp("lora")
    torchrun(export_dir, tiny_model_dir, tmp / "fsdp", merge=True)
    single(export_dir, tiny_model_dir, tmp / "single", merge=True)
    return tmp / "fsdp", tmp / "single"


def test_fsdp_lora_matches_single_process_and_exports_an_adapter(lora_runs, tiny_model_dir,
                                                                export_dir):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fsdp, one = lora_runs
    f, s = _metrics(fsdp), _metrics(one)
    assert [m["trained_tokens"] for m in f] == [m["trained_tokens"] for m in s]
    assert [m["loss"] for m in f] == pytest.approx([m["loss"] for m in s], rel=1e-5)
    meta = _meta(fsdp / "final")
    _assert_half_each(meta)
    # The memory plan's per-GPU parameter bytes are what each rank holds (fp32 shards).
    from trainer.plan import ModelShape, memory_plan

    cfg = TrainConfig(**{**meta["config"], "progress": False})
    plan = memory_plan(cfg, ModelShape.from_path(tiny_model_dir), 2, cuda=False)
    for held in meta["parallel"]["params_per_rank"]:
        assert plan.component("parameters") == pytest.approx(4 * held, rel=0.01)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert meta["snapshot_hash"] == manifest["content_hash"] and meta["code_version"]
    assert meta["config"]["shard"] == "fsdp" and meta["format"] == "lora"
    assert meta["base_model"] == str(tiny_model_dir) and meta["step"] == STEPS
    # The gathered adapter equals the single process's and loads with peft; merged loads as is.
    a = load_file(fsdp / "final" / "adapter_model.safetensors")
    b = load_file(one / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    tok = AutoTokenizer.from_pretrained(fsdp / "final")
    _generates(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                         fsdp / "final"), tok)
    _generates(AutoModelForCausalLM.from_pretrained(fsdp / "merged"), tok)
    assert _meta(fsdp / "merged")["format"] == "merged"


def test_fsdp_full_matches_single_process_and_a_2_rank_checkpoint_resumes_on_1(
        tmp_path, tiny_model_dir, export_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torchrun(export_dir, tiny_model_dir, tmp_path / "fsdp", full=True)
    s = single(export_dir, tiny_model_dir, tmp_path / "single", full=True)
    f = _metrics(tmp_path / "fsdp")
    assert [m["loss"] for m in f] == pytest.approx([m["loss"] for m in s], rel=1e-5)
    _assert_half_each(_meta(tmp_path / "fsdp" / "final"))
    a = load_file(tmp_path / "fsdp" / "final" / "model.safetensors")
    b = load_file(tmp_path / "single" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    final = tmp_path / "fsdp" / "final"
    _generates(AutoModelForCausalLM.from_pretrained(final), AutoTokenizer.from_pretrained(final))
    # The sharded step-2 checkpoint (model and AdamW state in 2 shards) resumes in one process.
    resumed = tmp_path / "one-rank"
    name = f"step-{SAVE_EVERY:06d}"
    shutil.copytree(tmp_path / "fsdp" / "checkpoints" / name, resumed / "checkpoints" / name)
    rest = single(export_dir, tiny_model_dir, resumed, full=True, resume=True)
    assert [m["step"] for m in rest] == list(range(SAVE_EVERY + 1, STEPS + 1))
    assert [m["loss"] for m in rest] == pytest.approx([m["loss"] for m in f[SAVE_EVERY:]], rel=1e-5)


def test_killed_rank_resumes_from_the_last_sharded_checkpoint(lora_runs, tmp_path,
                                                             tiny_model_dir, export_dir):
    out = tmp_path / "crashed"
    crash = [str(REPO / "tests" / "trainer_crash.py"), "1", str(SAVE_EVERY + 1), "--"]
    dead = torchrun(export_dir, tiny_model_dir, out, script=crash, check=False, merge=True)
    assert dead.returncode != 0  # rank 1 died in step 3; torchrun then stopped rank 0
    assert not (out / "final").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-{SAVE_EVERY:06d}"]
    torchrun(export_dir, tiny_model_dir, out, merge=True, resume=True)
    done, uninterrupted = _metrics(out), _metrics(lora_runs[0])
    for key in ("step", "loss", "lr", "grad_norm", "tokens_seen"):  # exactly, not approximately
        assert [m[key] for m in done] == [m[key] for m in uninterrupted], key


@pytest.mark.parametrize("settings,error", [
    (dict(shard_group=2), "shard_group=2 needs shard=fsdp"),
    (dict(cpu_offload=True, shard="ddp"), "cpu_offload=True needs shard=fsdp"),
    (dict(shard="fsdp", precision="fp16"), "not supported with shard=fsdp"),
    (dict(shard="zero3"), "use one of ddp, fsdp, none"),
])
def test_sharding_settings_are_checked(settings, error):
    with pytest.raises(ValueError, match=error):
        TrainConfig.from_dict(settings)


def test_fsdp_on_one_process_trains_like_the_plain_model(tmp_path, tiny_model_dir, export_dir):
    """No torchrun: a one-process group, so FSDP's offload and mixed precision work on one GPU."""
    import torch.distributed as td

    plain = single(export_dir, tiny_model_dir, tmp_path / "plain", full=True, max_steps=2)
    sharded = single(export_dir, tiny_model_dir, tmp_path / "fsdp", full=True, max_steps=2,
                     shard="fsdp")
    assert [m["loss"] for m in sharded] == pytest.approx([m["loss"] for m in plain], rel=1e-6)
    assert _meta(tmp_path / "fsdp" / "final")["parallel"]["mesh"] == [1]
    assert not td.is_initialized()  # the group it made is gone


@pytest.mark.slow
@pytest.mark.parametrize("settings,rel", [
    (dict(shard_group=1, precision="bf16", gradient_checkpointing=True), 2e-3),
    (dict(cpu_offload=True), 1e-5),
], ids=["hsdp-bf16-checkpointing", "cpu-offload"])
def test_fsdp_variants_match_single_process(tmp_path, tiny_model_dir, export_dir, settings, rel):
    """HSDP mesh (2 replicas x 1 shard) with bf16 compute and per-layer activation
    checkpointing (bf16 rounding: 2e-3); CPU offload (exact on CPU)."""
    torchrun(export_dir, tiny_model_dir, tmp_path / "fsdp", full=True, **settings)
    s = single(export_dir, tiny_model_dir, tmp_path / "single", full=True)
    f = _metrics(tmp_path / "fsdp")
    assert [m["loss"] for m in f] == pytest.approx([m["loss"] for m in s], rel=rel)
    mesh = _meta(tmp_path / "fsdp" / "final")["parallel"]["mesh"]
    assert mesh == ([2, 1] if settings.get("shard_group") else [2])
