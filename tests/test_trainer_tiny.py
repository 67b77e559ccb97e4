"""The offline tiny model fixture loads like a hub model and reproduces the double-BOS trap."""

from __future__ import annotations


def test_tiny_model_loads_with_chat_template(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama"
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "3 + 4?"}], tokenize=False)
    ids = tok(text)["input_ids"]
    # The template starts with BOS and the tokenizer adds one too: the trap the trainer avoids.
    assert ids[:2] == [tok.bos_token_id, tok.bos_token_id]
    assert model.config.vocab_size == len(tok)


def test_tiny_model_plain_is_deterministic(tiny_model_dir_plain, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.testing.tiny import build_tiny_model

    tok = AutoTokenizer.from_pretrained(tiny_model_dir_plain)
    assert tok.chat_template is None and tok.eos_token == "</s>"
    again = build_tiny_model(tmp_path / "again", with_chat_template=False)
    a = AutoModelForCausalLM.from_pretrained(tiny_model_dir_plain).state_dict()
    b = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
