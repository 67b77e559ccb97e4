"""One place decides where benchmark data is looked up (corpus.presets.find_data_file)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from corpus.presets import DATA_ENV, benchmark_file, data_dirs, find_data_file

REPO = Path(__file__).resolve().parent.parent


def write_gsm8k(folder: Path, question: str = "How many apples do 2 boxes of 3 hold?") -> Path:
    path = folder / "gsm8k" / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"question": question, "answer": "2 * 3 = 6\n#### 6"}) + "\n")
    return path


def test_the_order_is_explicit_path_then_env_then_shared_data_above_the_checkout(
        tmp_path, monkeypatch):
    mine = write_gsm8k(tmp_path / "env")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert benchmark_file("gsm8k") == mine
    assert benchmark_file("gsm8k", tmp_path / "explicit.jsonl") == tmp_path / "explicit.jsonl"
    assert benchmark_file("svamp") is None  # set: the only place looked, even if others exist
    monkeypatch.delenv(DATA_ENV)
    monkeypatch.chdir(tmp_path)
    dirs = data_dirs()
    assert dirs[0] == REPO.parent / "shared" / "data"  # ../shared/data next to the checkout
    assert tmp_path.parent / "shared" / "data" in dirs  # then above the current directory
    assert dirs.index(tmp_path.parent / "shared" / "data") > dirs.index(
        REPO.parent / "shared" / "data")


def test_an_empty_data_folder_is_a_fresh_machine_everywhere(tmp_path, monkeypatch):
    from selfevo import SelfevoError
    from selfevo.evaluate import load_items

    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert find_data_file("gsm8k", "test.jsonl") is None
    with pytest.raises(SelfevoError, match=f"no gsm8k test file found .*{DATA_ENV}="):
        load_items("gsm8k")
    write_gsm8k(tmp_path)
    name, items = load_items("gsm8k")
    assert name == "gsm8k" and [i.gold for i in items] == ["6"]


def test_no_other_code_builds_its_own_benchmark_path():
    pattern = re.compile(r"environ(\.get\(|\[)\s*[\"']SELFEVO_DATA"
                         r"|[\"']shared[\"']\s*/\s*[\"']data[\"']|shared/data/(gsm8k|svamp)")
    offenders = []
    for folder in ("corpus", "curation", "generation", "selfevo", "trainer", "schemas",
                   "bench", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "test_data_lookup.py" or path == REPO / "corpus" / "presets.py":
                continue
            for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
