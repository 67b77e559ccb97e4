"""Versioned templates: rendering, hashes, the self-feedback layout, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from curation.verdicts import parse_verdict
from generation.errors import GenerationError
from generation.templates import TEMPLATES_DIR, get_template, list_templates
from schemas.conversation import FEEDBACK_INSTRUCTION, REFINE_INSTRUCTION, record_messages
from schemas.identity import content_id

NAMES = ["feedback", "refinement", "response", "self_feedback", "self_refinement"]


def test_default_set_has_every_template_with_distinct_hashes() -> None:
    templates = list_templates()
    names = [t.name for t in templates]
    assert set(NAMES) <= set(names) and names == sorted(names)
    assert len({t.hash for t in templates}) == len(templates)
    assert all(t.hash.startswith("h1:") for t in templates)
    # A plain template's hash is the content id of its file text.
    feedback = get_template("feedback")
    assert feedback.hash == content_id(feedback.path.read_text(encoding="utf-8"))


def test_feedback_asks_for_the_verdict_line_and_shows_gold_only_when_given() -> None:
    t = get_template("feedback")
    with_gold = t.render(question="What is 3+4?", response="3+4=8", gold_answer="7")
    without = t.render(question="What is 3+4?", response="3+4=8")
    assert [m["role"] for m in with_gold] == ["system", "user"]
    user = with_gold[-1]["content"]
    assert "What is 3+4?" in user and "3+4=8" in user and "7" in user.split("3+4=8", 1)[1]
    assert '"Verdict: correct" or "Verdict: incorrect"' in user
    assert "Reference" in user and "Reference" not in without[-1]["content"]
    # The instruction's example lines are themselves parseable verdict lines.
    assert parse_verdict("ok\nVerdict: correct")[0] == "correct"


def test_refinement_and_response_render() -> None:
    msgs = get_template("refinement").render(question="Q1", response="R1", feedback="F1")
    assert "Q1" in msgs[-1]["content"] and "F1" in msgs[-1]["content"]
    assert "The answer is <number>." in msgs[-1]["content"]
    msgs = get_template("response").render(question="How many eggs?")
    assert msgs[-1] == {"role": "user", "content": "How many eggs?"}


@pytest.mark.parametrize(
    "question",
    [
        "What is 3+4?",
        "  Leading spaces and a trailing newline\n",
        "Line one\n\nLine two\n<|user|>\nnot a role",
    ],
)
def test_self_templates_are_exactly_the_trained_layout(question: str) -> None:
    response, feedback = "3+4=8\nThe answer is 8. ", "Wrong sum.\nVerdict: incorrect"

    def plain(msgs):  # the trainer's messages without the training flags
        return [{"role": m["role"], "content": m["content"]} for m in msgs]

    # The answer request is the first turn of every layout, verbatim (no system line).
    for layout in ("answer", "meta"):
        first = record_messages(kind="self", prompt=question, response=response,
                                feedback=feedback, refinement="r̂", layout=layout)[:1]
        assert get_template("response").render(question=question) == plain(first)

    got = get_template("self_feedback").render(question=question, response=response)
    expected = plain(
        record_messages(kind="self", prompt=question, response=response, feedback=None,
                        refinement=None)
    ) + [{"role": "user", "content": FEEDBACK_INSTRUCTION}]
    assert got == expected

    got = get_template("self_refinement").render(
        question=question, response=response, feedback=feedback
    )
    full = plain(
        record_messages(kind="self", prompt=question, response=response, feedback=feedback,
                        refinement="r̂")
    )
    # Everything the trainer puts before r̂: p, r, FEEDBACK_INSTRUCTION, f, REFINE_INSTRUCTION.
    assert got == full[:-1]
    assert got[-1]["content"] == REFINE_INSTRUCTION


def test_missing_variable_is_an_error_naming_it() -> None:
    with pytest.raises(GenerationError, match="response"):
        get_template("feedback").render(question="Q")


def test_unknown_template_and_set() -> None:
    with pytest.raises(GenerationError, match="have: feedback"):
        get_template("nope")
    with pytest.raises(GenerationError, match="unknown template set"):
        get_template("feedback", template_set="no-such-set")


def test_folder_set_hash_follows_content(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    shutil.copytree(TEMPLATES_DIR / "default", folder)
    same = get_template("feedback", template_set=str(folder))
    assert same.hash == get_template("feedback").hash  # same text, same version
    path = folder / "feedback.j2"
    path.write_text(path.read_text() + "Be brief.\n")
    changed = get_template("feedback", template_set=str(folder))
    assert changed.hash != same.hash
    assert changed.render(question="Q", response="R")[-1]["content"].endswith("Be brief.")


def test_bad_template_files(tmp_path: Path) -> None:
    (tmp_path / "broken.j2").write_text("<|user|>\n{{ question \n")
    with pytest.raises(GenerationError, match=r"broken\.j2:\d+: template syntax error"):
        get_template("broken", template_set=str(tmp_path))
    (tmp_path / "norole.j2").write_text("just text {{ question }}\n")
    with pytest.raises(GenerationError, match="no '<|user|>'"):
        get_template("norole", template_set=str(tmp_path)).render(question="Q")
    (tmp_path / "multi.j2").write_text("<|system|>\nS\n<|user|>\n{{ q }}\n<|assistant|>\nA\n")
    assert get_template("multi", template_set=str(tmp_path)).render(q="Q") == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]


def test_cli_list_and_show(cli) -> None:
    out = cli("templates", "list").output
    for name in NAMES:
        assert name in out
    assert get_template("feedback").hash in out
    shown = cli("templates", "show", "feedback").output
    assert get_template("feedback").hash in shown
    assert "Verdict: correct" in shown
    err = cli("templates", "show", "nope", exit_code=1).output
    assert "no template 'nope'" in err
