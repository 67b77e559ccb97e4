"""bench/train_bench.py's GPU path, checked where no GPU is: the bench models' sizes, the
FLOP and MFU arithmetic, and a ``--device cuda --dry-run`` that walks the whole plan."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_bench", REPO / "bench" / "train_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["cpu", "0.5b", "1b"])
def test_bench_models_have_the_sizes_they_claim(bench, name):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    m = bench.MODELS[name]
    config = LlamaConfig(vocab_size=max(m["model_vocab"], m["vocab_size"]), hidden_size=m["hidden"],
                         intermediate_size=m["intermediate"], num_hidden_layers=m["layers"],
                         num_attention_heads=m["heads"], num_key_value_heads=m["kv_heads"],
                         tie_word_embeddings=False)
    with torch.device("meta"):
        real = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert bench.shape_of(name).params == real
    if name != "cpu":  # the issue asks for a ~0.5-1B model on the GPU
        assert 0.45e9 < real < 1.2e9


def test_epoch_flops_and_mfu_arithmetic(bench):
    from trainer.plan import mfu, train_flops
    from trainer.sequences import Example

    shape = bench.shape_of("1b")
    examples = [Example([1] * 300, [-100] * 200 + [1] * 100), Example([1] * 100, [1] * 100)]
    full = bench.epoch_flops(examples, shape, True)
    assert full == train_flops(shape, tokens=400, trained_tokens=200,
                               sum_sq_lengths=300**2 + 100**2, full=True)
    body = 16 * (2048 * 2048 * 2 + 2048 * 512 * 2 + 3 * 2048 * 8192)  # q,o + k,v + MLP
    attn = 6 * 16 * 2048 * (300**2 + 100**2)
    assert full == 6 * body * 400 + 6 * 32000 * 2048 * 200 + attn
    lora = bench.epoch_flops(examples, shape, False)
    assert 0.6 < lora / full < 0.7  # 4N instead of 6N, plus the adapters
    # 40% of an H100's dense bf16 peak for 10 s is 3956 TFLOP.
    assert mfu(0.4 * 989e12 * 10, 10.0, 989.0) == pytest.approx(0.4)
    assert mfu(0.4 * 989e12 * 10 * 8, 10.0, 989.0, gpus=8) == pytest.approx(0.4)


def test_cuda_dry_run_plans_every_run_without_a_gpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, str(REPO / "bench" / "train_bench.py"), "--device",
                          "cuda", "--dry-run", "--n", "24", "--trainers", "selfevo,hf-grouped"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "model 1b: 1.104B parameters" in out.stdout
    assert out.stdout.count("would run:") == 4  # 2 trainers x (LoRA, full)
    assert "full: " in out.stdout and "TFLOP per epoch; selfevo's memory plan" in out.stdout
    assert not list(tmp_path.glob("train-bench-*"))  # the bench cleaned up
    scaling = subprocess.run([sys.executable, str(REPO / "bench" / "train_bench.py"), "--device",
                              "cuda", "--dry-run", "--n", "24", "--scaling", "--max-gpus", "8"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert scaling.returncode == 0, scaling.stderr[-2000:]
    assert [ln.split("--nproc_per_node ")[1].split()[0] for ln in scaling.stdout.splitlines()
            if "would run" in ln] == ["1", "2", "4", "8"]
