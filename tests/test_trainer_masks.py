"""Loss masks: the decoded trained spans are exactly the intended texts, EOS included."""

from __future__ import annotations

import pytest

from trainer.errors import TrainerError
from trainer.sequences import IGNORE, SequenceBuilder, build_examples
from trainer.show_masks import trained_texts
from trainer.testing.synthetic import export_row

META = {
    "kind": "meta",
    "prompt": "Ada has 3 apples and buys 4 more. How many apples?",
    "response": " She has 3 + 4 = 8. The answer is 8.",
    "feedback": "3 + 4 is 7, not 8.\nVerdict: incorrect",
    "verdict": "incorrect",
    "refinement": "3 + 4 = 7. The answer is 7.",
}
SELF = {**META, "kind": "self", "round": 1, "feedback": "Fine.\nVerdict: correct",
        "verdict": "correct"}
QA = {"kind": "qa", "prompt": "What is 2 + 5?", "response": "2 + 5 = 7. The answer is 7."}


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module", params=["template", "plain"])
def setup(request, tiny_model_dir, tiny_model_dir_plain):
    tok = _tokenizer(tiny_model_dir if request.param == "template" else tiny_model_dir_plain)
    end = "<|im_end|>" if request.param == "template" else "</s>"
    return request.param, tok, end


@pytest.mark.parametrize("rec", [META, SELF, QA], ids=["meta", "self", "qa"])
def test_trained_spans_are_exactly_the_answers(setup, rec):
    mode, tok, end = setup
    row = export_row(rec)
    builder = SequenceBuilder(tok)
    assert builder.format_name == ("chat-template" if mode == "template" else "plain")
    ex = builder.build(row["messages"])
    expected = [rec["response"]] if rec["kind"] == "qa" else [rec["feedback"], rec["refinement"]]
    assert trained_texts(ex, tok) == [t + end for t in expected]
    # Each trained span ends with the end-of-turn / EOS token, and that token has a label.
    eos = tok.eos_token_id
    trained_positions = [i for i, lab in enumerate(ex.labels) if lab != IGNORE]
    assert sum(1 for i in trained_positions if ex.input_ids[i] == eos) == len(expected)
    assert all(ex.labels[i] == ex.input_ids[i] for i in trained_positions)
    # Exactly one BOS, at the start.
    assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids.count(tok.bos_token_id) == 1


def test_template_sequence_is_what_inference_sees(tiny_model_dir):
    tok = _tokenizer(tiny_model_dir)
    row = export_row(META)
    ex = SequenceBuilder(tok).build(row["messages"])
    msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert tok.decode(ex.input_ids) == text
    # The naive way (tokenizer adds BOS on top of the template's) gives a double BOS.
    assert tok(text)["input_ids"][:2] == [tok.bos_token_id] * 2
    # The prompt the student sees at inference is a prefix of the training ids.
    prompt = tok.apply_chat_template(msgs[:3], tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ex.input_ids[: len(prompt_ids)] == prompt_ids


def test_plain_format_layout(tiny_model_dir_plain):
    tok = _tokenizer(tiny_model_dir_plain)
    ex = SequenceBuilder(tok).build(export_row(QA)["messages"])
    assert tok.decode(ex.input_ids) == (
        "<s>User:\nWhat is 2 + 5?\n\nAssistant:\n2 + 5 = 7. The answer is 7.</s>"
    )


def test_direct_example_and_weights(tiny_model_dir):
    tok = _tokenizer(tiny_model_dir)
    rows = [export_row(META), export_row(QA)]
    examples, stats = build_examples(rows, tok, max_len=4096, direct_weight=0.25)
    parts = [(e.part, e.weight) for e in examples]
    assert parts == [("meta", 1.0), ("direct", 0.25), ("qa", 1.0)]
    direct = examples[1]
    assert trained_texts(direct, tok) == [META["refinement"] + "<|im_end|>"]
    assert tok.decode(direct.input_ids).count(META["prompt"]) == 1
    assert stats.by_part == {"meta": 1, "direct": 1, "qa": 1}
    only_qa, _ = build_examples(rows, tok, max_len=4096, kinds=["qa"])
    assert [e.part for e in only_qa] == ["qa"]
    short, s2 = build_examples(rows, tok, max_len=60)
    assert s2.dropped_too_long >= 1 and all(len(e.input_ids) <= 60 for e in short)


def test_unstable_or_endless_templates_are_refused(tiny_model_dir):
    tok = _tokenizer(tiny_model_dir)
    msgs = export_row(META)["messages"]
    # A template that numbers turns from the end rewrites earlier turns when one is added.
    tok.chat_template = (
        "{% for m in messages %}{{ (messages|length - loop.index)|string + m['content'] }}"
        "<|im_end|>{% endfor %}"
    )
    with pytest.raises(TrainerError, match="prefix-stable"):
        SequenceBuilder(tok).build(msgs)
    # A template with no end-of-turn token would teach the model never to stop.
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    with pytest.raises(TrainerError, match="end-of-turn"):
        SequenceBuilder(tok).build(msgs)
    # Opting out of the template uses the plain format instead.
    ex = SequenceBuilder(tok, use_chat_template=False).build(msgs)
    assert trained_texts(ex, tok)[-1] == META["refinement"] + "<|im_end|>"
