"""One parser for trainer settings (``train --set``, ``evolve --train``): generated bad keys and
values fail before any work with one line naming the setting; good values come out typed."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus.store import Store
from trainer.config import CHOICES, NON_NEGATIVE, POSITIVE, TrainConfig, parse_overrides

HINTS = typing.get_type_hints(TrainConfig)
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
#: Set by evolve for each round; evolve refuses them with its own message.
PER_ROUND = {"data", "base", "out", "seed", "progress", "resume"}


def bad_values(name: str) -> list[str]:
    """Values of the wrong type or out of range for field ``name``."""
    hint = HINTS[name]
    if hint is bool:
        return ["maybe", "2", ""]
    if name in CHOICES:
        return ["bogus", CHOICES[name][0].upper() + "x"]
    out = {int: ["abc", "1.5", "1e3", ""], float: ["abc", "nan", "inf", "-inf", ""],
           str: []}.get(hint, ["[1,", '{"a": 1}'])
    if name in POSITIVE:
        out += ["0", "-1"]
    elif name in NON_NEGATIVE:
        out += ["-1"]
    if name == "betas":
        out += ["0.9", "1.5,0.9", "a,b"]
    if name == "kinds":
        out += ["", "meta,bogus"]
    return out


def typos(name: str) -> list[str]:
    """Misspellings of a field name that are no field name."""
    cands = {name + "z", name[1:] + name[0], name.upper().replace("_", "-")}
    return sorted(c for c in cands if c and c.replace("-", "_") not in FIELDS)


BAD_ITEMS = sorted({f"{n}={v}" for n in FIELDS for v in bad_values(n)}
                   | {f"{t}=1" for n in FIELDS for t in typos(n)} | {"max_steps", "=3"})


def named(item: str) -> str:
    """The setting a bad item's message must name."""
    return item.partition("=")[0].strip().replace("-", "_") or item


def one_line_error(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output and lines[0].startswith("Error:"), output
    return lines[0]


@pytest.mark.parametrize("item", BAD_ITEMS)
def test_train_refuses_a_bad_setting_before_any_work(cli, tmp_path, item):
    out, db = tmp_path / "out", str(tmp_path / "s.duckdb")
    (tmp_path / "data").mkdir()
    result = cli("train", "--data", str(tmp_path / "data"), "--base", str(tmp_path), "--out",
                 str(out), "--set", item, "--db", db, exit_code=1)
    line = one_line_error(result.output)
    assert named(item) in line
    assert not out.exists() and not Path(db).exists()


@pytest.fixture(scope="module")
def store_db(tmp_path_factory) -> str:
    """One store for the evolve refusals: none of them may write a run."""
    db = str(tmp_path_factory.mktemp("evolve") / "s.duckdb")
    Store.open(db).close()
    return db


@pytest.mark.parametrize("item", BAD_ITEMS)
def test_evolve_refuses_a_bad_setting_before_generation(cli, store_db, item):
    db = store_db
    result = cli("evolve", "--db", db, "--student", "hf:x", "--base", "b", "--prompts", "true",
                 "--train", item, exit_code=1)
    line = one_line_error(result.output)
    assert "--train" in line and named(item) in line
    runs = Store.open_readonly(db).query("SELECT command FROM runs")
    assert ("evolve generate",) not in runs and runs == []


@pytest.mark.parametrize("key", sorted(PER_ROUND))
def test_evolve_refuses_settings_it_makes_itself(cli, store_db, key):
    db = store_db
    value = {"seed": "1"}.get(key, "true" if HINTS[key] is bool else "x")
    line = one_line_error(cli("evolve", "--db", db, "--student", "hf:x", "--base", "b",
                              "--prompts", "true", "--train", f"{key}={value}",
                              exit_code=1).output)
    assert key in line and "set by evolve itself" in line


def test_a_one_letter_typo_names_the_setting_meant():
    for name in FIELDS:
        for typo in {name + "z", name[:-1] if len(name) > 3 else name + "s"}:
            with pytest.raises(ValueError, match=f"unknown trainer setting '{typo}' "
                                                 f"\\(did you mean {name}\\?\\)"):
                parse_overrides([f"{typo}=1"])


def good_value(name: str) -> st.SearchStrategy[tuple[str, object]]:
    """(text, value) pairs of valid settings for field ``name``."""
    hint = HINTS[name]
    if hint is bool:
        words = st.sampled_from([("true", True), ("1", True), ("yes", True), ("on", True),
                                 ("false", False), ("0", False), ("no", False), ("off", False)])
        case = st.sampled_from([str.lower, str.upper, str.title])
        return st.tuples(words, case).map(lambda w: (w[1](w[0][0]), w[0][1]))
    if name in CHOICES:
        return st.sampled_from(CHOICES[name]).map(lambda c: (c, c))
    if hint is int:
        low = 1 if name in POSITIVE else 0 if name in NON_NEGATIVE else -10**6
        return st.integers(low, 10**6).map(lambda n: (f" {n} ", n))
    if hint is float:
        floats = st.floats(0, 1e6, allow_nan=False, exclude_min=name in POSITIVE)
        return floats.map(lambda x: (repr(x), x))
    if hint is str:
        text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)
        return text.map(lambda t: (t, t.strip()))
    if name == "betas":
        beta = st.floats(0, 0.999, allow_nan=False)
        return st.tuples(beta, beta).map(lambda b: (f"{b[0]!r},{b[1]!r}", [b[0], b[1]]))
    subsets = st.lists(st.sampled_from(["meta", "self", "qa"]), min_size=1, unique=True)
    return subsets.flatmap(lambda ks: st.sampled_from(
        [(",".join(ks), ks), (str(ks).replace("'", '"'), ks)]))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_good_values_come_out_typed(data):
    name = data.draw(st.sampled_from(FIELDS), label="setting")
    text, value = data.draw(good_value(name), label="value")
    key = data.draw(st.sampled_from([name, name.replace("_", "-")]), label="spelling")
    parsed = parse_overrides([f"{key}={text}"])
    assert parsed == {name: value}
    expected = {bool: bool, int: int, float: float, str: str}.get(HINTS[name], list)
    assert type(parsed[name]) is expected
    # in range, so the whole config checks (fsdp-only settings come with shard=fsdp)
    needs = {"shard": "fsdp"} if name in ("shard_group", "cpu_offload") else {}
    cfg = TrainConfig.from_dict({**needs, **parsed})
    assert getattr(cfg, name) == (tuple(value) if name == "betas" else value)
