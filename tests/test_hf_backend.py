"""The in-process transformers backend on a tiny offline model (and SmolLM2 when slow)."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from generation.backends import ChatRequest, is_reference, load_backend
from generation.backends.hf import HFBackend, identity_spec, parse_spec, readable_name
from generation.errors import GenerationError
from schemas.conversation import record_conversations


def ask(text: str, **params) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}], {"max_tokens": 6, **params})


QUESTIONS = [f"How many apples {'and books ' * k}does she have?" for k in (3, 0, 5, 1, 4, 2, 0)]


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> HFBackend:
    b = load_backend(f"hf:{tiny_model_dir}", batch_size=3, device="cpu")
    assert isinstance(b, HFBackend)
    return b


def test_spec_parsing_and_dispatch(tiny_model_dir: Path) -> None:
    assert parse_spec("hf:org/model+/tmp/adapter") == ("org/model", "/tmp/adapter")
    assert parse_spec("hf:./ckpt") == ("./ckpt", None)
    for bad in ("hf:", "gpt-4", "hf"):
        with pytest.raises(GenerationError):
            load_backend(bad)
    assert is_reference("reference")
    with pytest.raises(GenerationError, match="grader"):
        load_backend("reference")
    b = load_backend(f"hf:{tiny_model_dir}")
    assert b.spec == f"hf:{tiny_model_dir.name}" and b.endpoint.startswith("weights:")


def test_batched_greedy_equals_one_by_one_and_keeps_order(backend: HFBackend) -> None:
    requests = [ask(q) for q in QUESTIONS]
    seen: list[int] = []
    batched = backend.generate(requests, on_result=lambda i, r: seen.append(i))
    single = [backend.generate([r])[0] for r in requests]
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.ok and r.text for r in batched)
    # on_result once per request; micro-batches go shortest prompt first.
    assert sorted(seen) == list(range(len(requests)))
    lengths = [len(backend.prompt_ids(requests[i].messages)) for i in seen]
    assert lengths == sorted(lengths)
    # Usage: prompt tokens are the unpadded prompt, completion tokens the generated ones.
    for req, res in zip(requests, batched, strict=True):
        assert res.prompt_tokens == len(backend.prompt_ids(req.messages))
        assert res.completion_tokens == 6 and res.finish_reason == "length"
        assert res.attempts and res.attempts[0].status == "ok"


def test_results_come_per_micro_batch(backend: HFBackend, monkeypatch) -> None:
    """on_result is called for a micro-batch's requests right after it runs, before the next."""
    runs: list[int] = []
    real = backend._generate_batch

    def counted(*args, **kwargs):
        runs.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(backend, "_generate_batch", counted)
    batches_done_at_callback: list[int] = []
    backend.generate([ask(q) for q in QUESTIONS],
                     on_result=lambda i, r: batches_done_at_callback.append(len(runs)))
    # 7 requests, batch_size 3 → micro-batches of 3, 3, 1.
    assert batches_done_at_callback == [1, 1, 1, 2, 2, 2, 3]


def test_sampling_is_seeded_and_sample_index_varies(backend: HFBackend) -> None:
    def sample(seed: int, index: int) -> str:
        req = ChatRequest(
            [{"role": "user", "content": "How many books?"}],
            {"max_tokens": 12, "temperature": 1.0, "top_p": 1.0, "seed": seed},
            sample_index=index,
        )
        return backend.generate([req])[0].text

    assert sample(1, 0) == sample(1, 0)
    assert len({sample(1, i) for i in range(4)}) > 1
    greedy = backend.generate([ask("How many books?", max_tokens=12)])[0].text
    assert greedy == backend.generate([ask("How many books?", max_tokens=12)])[0].text


def test_stop_strings_and_eos(backend: HFBackend, tiny_model_dir: Path, tmp_path: Path) -> None:
    full = backend.generate([ask("How many apples?", max_tokens=10)])[0].text
    stop = full[3:5]
    cut = backend.generate([ask("How many apples?", max_tokens=10, stop=[stop])])[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.find(stop)]

    # A model whose head always prefers the end-of-turn token stops at once.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # constant hidden state (all ones) and a head that maps it to eos
        model.model.embed_tokens.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eos_token_id] = 1.0
    eager = tmp_path / "eager-stop"
    model.save_pretrained(eager)
    tok.save_pretrained(eager)
    res = load_backend(f"hf:{eager}").generate([ask("How many apples?")])[0]
    assert (res.text, res.finish_reason, res.completion_tokens) == ("", "stop", 1)


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_model_dir_plain"])
def test_every_inference_prompt_is_the_trained_prefix(fixture: str, request) -> None:
    """Inference = training, token for token: for every record layout and every turn the
    trainer puts loss on, the request selfevo sends at inference for that turn (the answer,
    the self-feedback, the self-refinement — the default templates, as evolve, refine and
    eval ask) tokenises to exactly the ids the trainer builds before that turn. For the
    chat-template tokenizer and the plain User:/Assistant: format, on generated texts."""
    from transformers import AutoTokenizer

    from selfevo.refine import RefinePrompts
    from trainer.sequences import SequenceBuilder

    folder = request.getfixturevalue(fixture)
    b = load_backend(f"hf:{folder}", device="cpu")
    builder = SequenceBuilder(AutoTokenizer.from_pretrained(folder))
    assert builder.format_name == ("plain" if fixture.endswith("plain") else "chat-template")
    tp, rng = RefinePrompts(), random.Random(11)
    words = ["apples", "3 + 4 = 7.", "\n", "  ", "Verdict: correct", "The answer is 12.", "é"]
    for _ in range(6):
        p, r, f, rr = (" ".join(rng.choices(words, k=rng.randint(1, 6))) for _ in range(4))
        # a trained turn's position -> what inference sends to have it written
        asked = {1: tp.answer(p), 3: tp.feedback(p, r), 5: tp.refinement(p, r, f)}
        for kind, layout in (("qa", "answer"), ("self", "answer"), ("self", "meta"),
                             ("meta", "meta+answer")):
            for conversation in record_conversations(kind=kind, prompt=p, response=r,
                                                     feedback=f, refinement=rr, layout=layout):
                trained = [i for i, m in enumerate(conversation) if m["train"]]
                assert trained
                for i in trained:
                    messages = asked[i]
                    context = [t for ids, _ in builder.pieces(conversation[: i + 1])[:-1]
                               for t in ids]
                    assert b.prompt_ids(messages) == context, (fixture, kind, layout, i)


def test_plain_format_without_chat_template(tiny_model_dir_plain: Path) -> None:
    from transformers import AutoTokenizer

    from trainer.sequences import SequenceBuilder

    b = load_backend(f"hf:{tiny_model_dir_plain}")
    msgs = [{"role": "user", "content": "How many apples?"}]
    res = b.generate([ChatRequest(msgs, {"max_tokens": 4})])[0]
    assert res.ok and res.completion_tokens == 4
    trained = [{"role": "user", "content": "How many apples?", "train": False},
               {"role": "assistant", "content": "7", "train": True}]
    pieces = SequenceBuilder(AutoTokenizer.from_pretrained(tiny_model_dir_plain),
                             use_chat_template=False).pieces(trained)
    assert b.prompt_ids(msgs) == [t for ids, _ in pieces[:-1] for t in ids]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)  # random B: the adapter changes outputs
    peft_model = get_peft_model(model, config)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


def test_adapter_loading(backend: HFBackend, tiny_model_dir: Path, adapter_dir: Path) -> None:
    requests = [ask(q, max_tokens=8) for q in QUESTIONS[:3]]
    base = [r.text for r in backend.generate(requests)]
    with_adapter = load_backend(f"hf:{tiny_model_dir}+{adapter_dir}")
    tuned = [r.text for r in with_adapter.generate(requests)]
    assert tuned != base
    assert with_adapter.endpoint != backend.endpoint  # adapter weights are part of call_id
    # The adapter folder alone loads its recorded base model underneath; unmerged gives the same.
    alone = load_backend(f"hf:{adapter_dir}", merge_adapter=False)
    assert alone.base_path == str(tiny_model_dir)
    assert [r.text for r in alone.generate(requests)] == tuned
    with pytest.raises(GenerationError, match="adapter_config.json"):
        load_backend(f"hf:{tiny_model_dir}+{tiny_model_dir}")


def test_endpoint_changes_with_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert load_backend(f"hf:{copy}").endpoint == load_backend(f"hf:{tiny_model_dir}").endpoint
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert load_backend(f"hf:{copy}").endpoint != load_backend(f"hf:{tiny_model_dir}").endpoint


def test_identity_names_folders_by_their_own_name_never_by_path(tmp_path, monkeypatch):
    """Generated folder trees: wherever a model lies and however it is written (absolute,
    relative, ./, trailing slash, symlink), its spec in the store is its folder's name."""
    rng = random.Random(7)
    monkeypatch.chdir(tmp_path)
    for i in range(20):
        parts = [f"{rng.choice(['runs', 'out', 'ckpt', 'a b', 'models'])}{rng.randint(0, 9)}"
                 for _ in range(rng.randint(1, 4))]
        base = tmp_path.joinpath(*parts, f"base-{i}")
        adapter = tmp_path.joinpath(*reversed(parts), "final")
        base.mkdir(parents=True, exist_ok=True)
        adapter.mkdir(parents=True, exist_ok=True)
        rel_base, rel_adapter = base.relative_to(tmp_path), adapter.relative_to(tmp_path)
        for model, adp in ((str(base), str(adapter)), (str(rel_base), f"./{rel_adapter}/"),
                           (f"{base}/", str(rel_adapter))):
            assert identity_spec(f"hf:{model}+{adp}") == f"hf:base-{i}+final"
            assert identity_spec(f"hf:{model}") == f"hf:base-{i}"
    link = tmp_path / "latest"
    link.symlink_to(adapter)
    assert readable_name(str(link)) == "final"
    # aliases and hub names are names already; an absolute path never survives
    assert readable_name("smollm2-135m") == readable_name("SmolLM2-135M") == "smollm2-135m"
    assert readable_name("org/model") == "org/model"
    assert readable_name("/elsewhere/not/here/m7") == "m7"


def test_a_moved_model_hits_its_cache_and_the_store_holds_no_machine_path(
        cli, db, tiny_model_dir, adapter_dir, tmp_path):
    """The same base and adapter copied to another machine's folders: the same call ids (the
    second eval sends nothing), the same registered model, and no absolute path in any stored
    row except the path columns of ``models``."""
    from corpus.store import Store
    from selfevo.checkpoints import register_checkpoint
    from trainer.config import TrainConfig

    here = tmp_path / "machine-a"
    base = shutil.copytree(tiny_model_dir, here / "models" / "tiny")
    adapter = shutil.copytree(adapter_dir, here / "runs" / "e1" / "r1" / "final")
    with Store.open(db) as store, store.run("train", {}) as run:
        cfg = TrainConfig(data=str(here / "export"), base=str(base), out=str(adapter.parent))
        model_id = register_checkpoint(store, run, SimpleNamespace(
            final_dir=adapter, snapshot_hash="h1:snap", metrics={"loss": 1.5}), cfg)
        trained_by = run.run_id
    bench = tmp_path / "two.jsonl"
    bench.write_text('{"question": "2 + 3?", "answer": "5"}\n'
                     '{"question": "4 - 1?", "answer": "3"}\n')

    def evaluate(folder: Path) -> None:
        cli("eval", "run", "--model", f"hf:{folder / 'models/tiny'}+{folder / 'runs/e1/r1/final'}",
            "--bench", str(bench), "--mode", "direct", "--max-tokens", "4", "--db", db)

    evaluate(here)
    with Store.open_readonly(db) as store:
        calls = store.query("SELECT call_id, model, endpoint FROM calls ORDER BY call_id")
    there = tmp_path / "machine-b"
    shutil.move(here, there)
    evaluate(there)
    with Store.open(db) as store:
        assert store.query("SELECT call_id, model, endpoint FROM calls ORDER BY call_id") == calls
        assert {m for _, m, _ in calls} == {"hf:tiny+final"}
        assert store.query("SELECT DISTINCT model, model_id FROM evals") == [
            ("hf:tiny+final", model_id)]
        assert store.query("SELECT name, base FROM models") == [("final", "tiny")]
        # registering the moved checkpoint keeps its id and says where it lies now
        with store.run("train", {}) as run:
            cfg.base, cfg.out = str(there / "models" / "tiny"), str(there / "runs/e1/r1")
            again = register_checkpoint(store, run, SimpleNamespace(
                final_dir=there / "runs/e1/r1/final", snapshot_hash="h1:snap",
                metrics={"loss": 1.5}), cfg)
        assert again == model_id
        assert store.query("SELECT path, run_id FROM models") == [
            (str(there / "runs/e1/r1/final"), trained_by)]
        leaks = []
        for (table,) in store.query("SELECT table_name FROM information_schema.tables "
                                    "WHERE table_type = 'BASE TABLE'"):
            columns = [c for (c,) in store.query(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "AND data_type IN ('VARCHAR', 'JSON')", [table])]
            for column in columns:
                if (table, column) in {("models", "path"), ("models", "base_path")}:
                    continue
                leaks += [(table, column, v) for (v,) in store.query(
                    f'SELECT "{column}" FROM "{table}" WHERE contains("{column}"::VARCHAR, ?)',
                    [str(tmp_path)])]
    assert not leaks, leaks


@pytest.mark.slow
def test_smollm2_conversion_cached_reload_and_generation(tmp_path: Path, monkeypatch) -> None:
    """hf:smollm2-135m: convert the shipped GGUF once, reload from the cache quickly, answer."""
    from generation.backends import smollm2

    monkeypatch.setenv("SELFEVO_CACHE", str(tmp_path))
    started = time.perf_counter()
    b = load_backend("hf:smollm2-135m", device="cpu")
    b.load()
    first = time.perf_counter() - started
    assert smollm2.is_converted() and smollm2.model_dir().parent.parent == tmp_path
    # an ordinary float32 folder: no GGUF quantization_config left for vLLM to refuse
    config = json.loads((smollm2.model_dir() / "config.json").read_text())
    assert "quantization_config" not in config
    converted = {p: p.stat().st_mtime_ns for p in smollm2.model_dir().iterdir()}
    started = time.perf_counter()
    again = load_backend("hf:smollm2-135m", device="cpu")
    again.load()
    reload = time.perf_counter() - started
    print(f"smollm2: convert+load {first:.1f}s, cached load {reload:.2f}s")
    # the second load reads the cache: nothing rewritten, no second conversion folder
    assert {p: p.stat().st_mtime_ns for p in smollm2.model_dir().iterdir()} == converted
    assert sorted(p.name for p in smollm2.model_dir().parent.iterdir()) == [smollm2.NAME]
    res = again.generate([ask("What is 2 + 3? Answer with a number.", max_tokens=20)])[0]
    assert res.ok and res.finish_reason == "stop" and "5" in res.text


def test_importing_backends_and_templates_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, generation.backends, generation.backends.hf, generation.backends.smollm2, "
        "generation.templates, generation.teachers.reference, curation.answers, curation.verdicts; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'openai', 'math_verify') "
        "if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_older_smollm2_conversion_is_repaired_once(tmp_path: Path, tiny_model_dir) -> None:
    """A cached folder converted with the GGUF quantization_config still in config.json (which
    vLLM refuses and ``train --merge`` cannot save) loses that key on its next use, and only it."""
    import shutil

    from generation.backends import smollm2

    folder = tmp_path / "models" / smollm2.NAME
    shutil.copytree(tiny_model_dir, folder)
    (folder / smollm2.MARKER).write_text("{}")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(
        {**config, "quantization_config": {"quant_method": "gguf"}}))
    assert smollm2.convert(folder) == folder
    assert json.loads((folder / "config.json").read_text()) == config
    before = (folder / "config.json").stat().st_mtime_ns
    smollm2.convert(folder)  # nothing left to repair: the file is not rewritten
    assert (folder / "config.json").stat().st_mtime_ns == before
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
