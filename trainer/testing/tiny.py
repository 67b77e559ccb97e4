"""A tiny Llama-architecture causal LM and byte-level BPE tokenizer, built offline in seconds.

Tests and benchmarks need a real transformers model folder (``config.json``, safetensors,
``tokenizer.json``, ``tokenizer_config.json``) without a network. :func:`build_tiny_model`
trains a byte-level BPE on a small built-in text (numbers, math words, chat role tokens and the
meta-skill instructions), random-initialises a seeded ``LlamaForCausalLM`` and saves both the
normal Hugging Face way, so ``AutoModelForCausalLM`` / ``AutoTokenizer`` load it like any hub
model.

With ``with_chat_template=True`` the tokenizer gets a ChatML-like template that *also* starts
with ``{{ bos_token }}`` while the tokenizer adds BOS on encode — the classic double-BOS trap
(Llama 3 style), which the trainer must avoid. ``eos_token`` is then the end-of-turn token
``<|im_end|>`` (as in SmolLM2-Instruct). Without a template, ``eos_token`` is ``</s>``.
"""

from __future__ import annotations

from pathlib import Path

BOS = "<s>"
EOS = "</s>"
PAD = "<pad>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

#: ChatML-like template; the leading bos_token is deliberate (see module docstring).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _training_text() -> list[str]:
    """The small built-in corpus the BPE is trained on (deterministic)."""
    from schemas.conversation import FEEDBACK_INSTRUCTION, REFINE_INSTRUCTION

    words = (
        "the answer is question step first then so total each how many more less than "
        "add subtract multiply divide sum difference product half twice three times "
        "apples oranges books dollars cents hours minutes days weeks students teacher "
        "she he they has have had buys sells gives left remaining costs price per "
        "correct incorrect verdict mistake fix refined reasoning review answer above "
        "user assistant system feedback refine original write show end with one line"
    ).split()
    lines = [FEEDBACK_INSTRUCTION, REFINE_INSTRUCTION, "Verdict: correct", "Verdict: incorrect"]
    lines += [f"{a} + {b} = {a + b}. {a} * {b} = {a * b}." for a in range(0, 40) for b in (3, 7)]
    lines += [" ".join(words[i : i + 9]) + "." for i in range(0, len(words), 3)]
    lines += [
        f"{IM_START}user\nHow many {w}?{IM_END}\n{IM_START}assistant\nThe answer is {i}.{IM_END}"
        for i, w in enumerate(words)
    ]
    lines += ["User:\nQ\n\nAssistant:\nA", "0123456789 ,.;:!?()[]{}<>=+-*/%$#'\"\n\t"]
    return lines


def build_tiny_model(
    out_dir: str | Path,
    *,
    with_chat_template: bool = True,
    seed: int = 0,
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 2048,
    model_vocab: int | None = None,
) -> Path:
    """Build and save a tiny random Llama model + byte-level BPE tokenizer; return ``out_dir``.

    Deterministic for a given ``seed`` and arguments. Takes about a second on a laptop CPU.
    ``model_vocab`` pads the embedding matrix beyond the tokenizer (benchmarks that want a
    realistic 32k-vocabulary model cost).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    specials = [PAD, BOS, EOS, IM_START, IM_END]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Like Llama tokenizers: encode(..., add_special_tokens=True) prepends BOS.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    eos = IM_END if with_chat_template else EOS
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=eos,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END] if with_chat_template else None,
        model_max_length=max_positions,
    )
    if with_chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=max(model_vocab or 0, len(fast)),
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=bos_id,
        eos_token_id=fast.convert_tokens_to_ids(eos),
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    return out
