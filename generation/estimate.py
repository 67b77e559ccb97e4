"""``selfevo collect --dry-run``: the calls a collection would send, their tokens and cost.

The dry run walks the collection's stages like the run does, building every request with
the run's own :func:`generation.collect.stage_calls` (so ``--no-gold``, ``--samples`` and
the template set shape it exactly as they shape the run). A call already ``ok`` in the
store is counted as cached, not priced, and its stored answer feeds the next stage, as in
the run. An answer that does not exist yet (the response a feedback prompt quotes, the
feedback a refinement prompt quotes) is stood in for by a placeholder of about
``max_tokens / 2`` tokens. Nothing is sent and nothing is written.

In batch modes (``--mode batch|file``) every stage is one chunk, as the run sends it; the
shards per stage are counted by the writer's own :class:`~generation.batches.shards.Splitter`
over the request lines, and the cost is at batch prices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corpus.store import Store
from generation.backends.base import ChatRequest
from generation.backends.openai_backend import (
    estimate_tokens,
    public_spec,
    spec_identity,
    upper_bound_tokens,
)
from generation.batches.shards import Splitter, request_line
from generation.collect import (
    STAGES,
    CollectConfig,
    Item,
    call_stages,
    load_templates,
    make_backend,
    select_prompts,
    stage_calls,
    start_items,
)
from generation.ledger import Ledger, call_id
from generation.prices import PriceTable


@dataclass
class DryRun:
    """What a collection would send: calls, token estimates and a cost bound."""

    prompts: int
    calls: dict[str, int] = field(default_factory=dict)  # calls to send, per stage
    cached: dict[str, int] = field(default_factory=dict)  # answered in the store, per stage
    prompt_tokens: int = 0
    completion_tokens_max: int = 0
    cost_max: float = 0.0  # over the calls whose model has a price
    unpriced: list[str] = field(default_factory=list)  # specs without a price (not in cost_max)
    #: call_id of each call to send, per stage (exact where the answers it quotes exist)
    call_ids: dict[str, list[str]] = field(default_factory=dict)
    skipped_no_response: int = 0
    mode: str = "online"  # batch / file: priced at batch prices, sent as shards
    shards: dict[str, int] = field(default_factory=dict)  # batch modes: shards per stage


def dry_run(store: Store, config: CollectConfig, run_id: str) -> DryRun:
    """Count the calls a collection would make and bound their tokens and cost; send nothing."""
    with Ledger(store, run_id) as ledger:
        prompts = select_prompts(ledger, config.where, config.limit)
        mode = config.batch.mode if config.batch else "online"
        estimate = Estimate(config, DryRun(len(prompts), mode=mode))
        chunk = config.chunk_size(len(prompts))
        for start in range(0, len(prompts), chunk):
            estimate.chunk(ledger, prompts[start:start + chunk])
    return estimate.result


class Estimate:
    """Walks the stages of a collection over the store's cache, pricing what is missing."""

    def __init__(self, config: CollectConfig, result: DryRun):
        self.config = config
        self.result = result
        self.templates = load_templates(config)
        self.prices = PriceTable.load(config.options.prices)
        self.filler = "x" * (2 * config.max_tokens)  # ~max_tokens/2 tokens of text
        self.placeholders = 0
        self.identities: dict[str, tuple[str, str | None]] = {}
        self.seen: set[str] = set()  # one request per distinct call, as the ledger sends
        self.splitters: dict[str, Splitter] = {}  # batch modes: shards per stage, as written

    def chunk(self, ledger: Ledger, prompts: list[dict[str, Any]]) -> None:
        """Estimate one chunk of prompts, stage by stage."""
        items, skipped = start_items(ledger, self.config, prompts)
        self.result.skipped_no_response += skipped
        for stage in call_stages(self.config):
            self.stage(ledger, stage, items)

    def stage(self, ledger: Ledger, stage: str, items: list[Item]) -> None:
        """Count one stage's calls: cached ones feed their answer on, the rest are priced."""
        spec = (self.config.responder if stage == "response" else self.config.teacher) or ""
        model, endpoint = self.identity(spec)
        calls = stage_calls(stage, self.config, self.templates, items)
        ids = [call_id(model, endpoint, c.request) for c in calls]
        rows = ledger.lookup(ids)
        for it, call, cid in zip(items, calls, ids, strict=True):
            row = rows.get(cid)
            if row is not None and row["status"] == "ok":
                self.result.cached[stage] = self.result.cached.get(stage, 0) + 1
                _answer(it, stage, row["response"])
                continue
            if cid not in self.seen:
                self.seen.add(cid)
                self.add(stage, spec, call.request, cid)
            _answer(it, stage, self.placeholder())

    def placeholder(self) -> str:
        """Text standing in for an answer not generated yet (distinct, so never deduplicated)."""
        self.placeholders += 1
        return f"(not generated yet #{self.placeholders}) {self.filler}"

    def identity(self, spec: str) -> tuple[str, str | None]:
        """(model, endpoint) the calls of ``spec`` are keyed by (an ``openai:`` one needs no key)."""
        if spec not in self.identities:
            if spec.startswith("openai:"):
                self.identities[spec] = spec_identity(spec)
            else:
                backend = make_backend(spec, self.config.options)
                self.identities[spec] = (backend.spec, backend.endpoint)
                backend.close()
        return self.identities[spec]

    def add(self, stage: str, spec: str, request: ChatRequest, cid: str) -> None:
        """Count a call to send: its tokens, and its cost bound when its model has a price."""
        r = self.result
        r.calls[stage] = r.calls.get(stage, 0) + 1
        r.call_ids.setdefault(stage, []).append(cid)
        prompt, completion = estimate_tokens(request)
        r.prompt_tokens += prompt
        r.completion_tokens_max += completion
        price = None
        batch = self.config.batch
        if spec.startswith("openai:"):
            model = spec_identity(spec)[0][len("openai:"):]
            price = self.prices.price(model, batch=batch is not None)
            if batch is not None:
                if stage not in self.splitters:
                    self.splitters[stage] = Splitter(batch.max_requests, batch.max_bytes)
                line = request_line(cid, model, request.messages, request.params)
                self.splitters[stage].add(len(line))
                r.shards[stage] = self.splitters[stage].shards
            if price is None and public_spec(spec) not in r.unpriced:
                r.unpriced.append(public_spec(spec))
        if price is not None:
            bound_prompt, bound_completion = upper_bound_tokens(request)
            r.cost_max += (price[0] * bound_prompt + price[1] * bound_completion) / 1e6


def _answer(it: Item, stage: str, text: str) -> None:
    if stage == "response":
        it.response = text
    elif stage == "feedback":
        it.feedback = text


_CACHED_LABEL = {"response": "responses", "feedback": "feedback", "refinement": "refinements"}


def dry_run_table(d: DryRun) -> Any:
    """What a dry run found, as a rich table."""
    from rich.table import Table

    batch = d.mode != "online"
    title = f"selfevo collect --dry-run --mode {d.mode}" if batch else "selfevo collect --dry-run"
    t = Table(title=f"{title} (nothing sent)")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("prompts", str(d.prompts))
    if d.skipped_no_response:
        t.add_row("prompts without a response", str(d.skipped_no_response))
    for stage in STAGES:
        if stage in d.calls:
            t.add_row(f"{stage} calls", str(d.calls[stage]))
        if stage in d.shards:
            t.add_row(f"{stage} shards", str(d.shards[stage]))
    t.add_row("calls to send", str(sum(d.calls.values())))
    for stage in STAGES:
        if stage in d.cached or (stage == "response" and stage in d.calls):
            t.add_row(f"{_CACHED_LABEL[stage]} already cached", str(d.cached.get(stage, 0)))
    t.add_row("prompt tokens (estimate)", f"{d.prompt_tokens:,}")
    t.add_row("completion tokens (at most)", f"{d.completion_tokens_max:,}")
    t.add_row("cost (at most, USD" + (", batch prices)" if batch else ")"), f"${d.cost_max:.4f}")
    if d.unpriced:
        t.add_row("no price (not in the cost)", ", ".join(d.unpriced))
    return t
