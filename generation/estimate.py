"""``selfevo collect --dry-run``: the calls a collection would send, their tokens and cost.

Nothing is sent and no record is written; cached calls are counted, not priced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corpus.store import Store
from generation.backends.base import ChatRequest
from generation.backends.openai_backend import (
    estimate_tokens,
    public_spec,
    spec_identity,
    upper_bound_tokens,
)
from generation.collect import (
    STAGES,
    CollectConfig,
    existing_responses,
    make_backend,
    select_prompts,
)
from generation.ledger import Ledger
from generation.prices import PriceTable


@dataclass
class DryRun:
    """What a collection would send: calls, token estimates and a cost bound."""

    prompts: int
    calls: dict[str, int]
    cached_responses: int
    prompt_tokens: int
    completion_tokens_max: int
    cost_max: float  # over the calls whose model has a price
    unpriced: list[str]  # model specs without a price (their calls are not in cost_max)


def dry_run(store: Store, config: CollectConfig, run_id: str) -> DryRun:
    """Count the calls a collection would make and bound their tokens and cost; send nothing.

    Feedback and refinement prompts contain the responses, which do not exist yet: their
    size is estimated with a response of ``max_tokens / 2`` tokens.
    """
    from generation.ledger import call_id
    from generation.teachers import is_offline_teacher
    from generation.templates import get_template

    with Ledger(store, run_id) as ledger:
        prompts = select_prompts(ledger, config.where, config.limit)
        existing = ({} if config.responder else existing_responses(
            ledger, [p["prompt_id"] for p in prompts], config.responses_from))
        calls: dict[str, int] = {}
        pt = ct = 0
        cost = 0.0
        unpriced: list[str] = []
        prices = PriceTable.load(config.options.prices)
        cached = 0
        filler = "x" * (2 * config.max_tokens)  # ~max_tokens/2 tokens of response
        params = {"temperature": config.temperature, "max_tokens": config.max_tokens}

        def add(stage: str, spec: str, request: ChatRequest) -> None:
            nonlocal pt, ct, cost
            calls[stage] = calls.get(stage, 0) + 1
            p, c = estimate_tokens(request)
            pt += p
            ct += c
            price = None
            if spec.startswith("openai:"):
                price = prices.price(spec_identity(spec)[0][len("openai:"):])
                if price is None and public_spec(spec) not in unpriced:
                    unpriced.append(public_spec(spec))
            if price is not None:
                bp, bc = upper_bound_tokens(request)
                cost += (price[0] * bp + price[1] * bc) / 1e6

        if config.responder:
            tpl = get_template("response", config.template_set)
            if config.responder.startswith("openai:"):  # no key needed to count
                model_spec, endpoint = spec_identity(config.responder)
            else:
                responder = make_backend(config.responder, config.options)
                model_spec, endpoint = responder.spec, responder.endpoint
            reqs = [ChatRequest(tpl.render(question=p["text"]), params, s)
                    for p in prompts for s in range(config.samples)]
            ids = [call_id(model_spec, endpoint, r) for r in reqs]
            done = {r[0] for r in ledger.query(
                "SELECT call_id FROM calls WHERE status = 'ok' AND call_id IN (SELECT unnest(?))",
                [ids])}
            for r, cid in zip(reqs, ids, strict=True):
                if cid in done:
                    cached += 1
                else:
                    add("response", config.responder, r)
        if not is_offline_teacher(config.teacher):
            fb = get_template("feedback", config.template_set)
            rf = get_template("refinement", config.template_set)
            tparams = {"temperature": 0.0, "max_tokens": config.max_tokens}
            for p in prompts:
                per = config.samples if config.responder else len(existing.get(p["prompt_id"], []))
                for _ in range(per):
                    add("feedback", config.teacher, ChatRequest(fb.render(
                        question=p["text"], response=filler, gold_answer=p["gold_answer"]), tparams))
                    add("refinement", config.teacher, ChatRequest(rf.render(
                        question=p["text"], response=filler, feedback=filler,
                        gold_answer=p["gold_answer"]), tparams))
    return DryRun(len(prompts), calls, cached, pt, ct, cost, unpriced)


def dry_run_table(d: DryRun) -> Any:
    """What a dry run found, as a rich table."""
    from rich.table import Table

    t = Table(title="selfevo collect --dry-run (nothing sent)")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("prompts", str(d.prompts))
    for stage in STAGES:
        if stage in d.calls:
            t.add_row(f"{stage} calls", str(d.calls[stage]))
    t.add_row("calls to send", str(sum(d.calls.values())))
    t.add_row("responses already cached", str(d.cached_responses))
    t.add_row("prompt tokens (estimate)", f"{d.prompt_tokens:,}")
    t.add_row("completion tokens (at most)", f"{d.completion_tokens_max:,}")
    t.add_row("cost (at most, USD)", f"${d.cost_max:.4f}")
    if d.unpriced:
        t.add_row("no price (not in the cost)", ", ".join(d.unpriced))
    return t
