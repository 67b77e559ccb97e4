"""The price table: USD per 1M input / output tokens by model name.

``generation/prices.json`` ships with selfevo; ``--prices FILE`` (same layout) overrides its
entries. A model is priced by exact name, else by the longest name that prefixes it.

Batch prices (``--mode batch``): an entry's ``batch_input`` / ``batch_output`` when it has
them, else its online prices times the table's ``batch_discount`` (0.5: the OpenAI Batch
API bills half; a ``--prices`` file may set its own).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from generation.errors import GenerationError

#: The price table shipped with selfevo (USD per 1M tokens).
SHIPPED_PRICES = Path(__file__).resolve().parent / "prices.json"


class PriceTable:
    """USD per 1M tokens by model name; exact match, else the longest matching prefix."""

    def __init__(self, models: dict[str, dict[str, float]], batch_discount: float = 0.5):
        self.models = models
        self.batch_discount = batch_discount

    @classmethod
    def load(cls, override: str | os.PathLike[str] | None = None) -> PriceTable:
        """The shipped table, with ``override``'s entries (same layout) on top."""
        shipped = json.loads(SHIPPED_PRICES.read_text("utf-8"))
        models = dict(shipped["models"])
        discount = float(shipped.get("batch_discount", 0.5))
        if override:
            path = Path(override)
            try:
                data = json.loads(path.read_text("utf-8"))
            except FileNotFoundError:
                raise GenerationError(f"price table {path} not found") from None
            except ValueError as exc:
                raise GenerationError(f"price table {path} is not valid JSON: {exc}") from None
            entries = data.get("models", data) if isinstance(data, dict) else None
            if not isinstance(entries, dict):
                raise GenerationError(f'price table {path}: expected {{"models": {{NAME: {{...}}}}}}')
            for name, p in entries.items():
                if name.startswith("_"):
                    continue
                if not (isinstance(p, dict) and {"input", "output"} <= set(p)):
                    raise GenerationError(
                        f"price table {path}: model {name!r} needs 'input' and 'output' "
                        "(USD per 1M tokens)"
                    )
                models[name] = p
            if isinstance(data.get("batch_discount"), int | float):
                discount = float(data["batch_discount"])
        return cls(models, discount)

    def price(self, model: str, batch: bool = False) -> tuple[float, float] | None:
        """(input, output) USD per 1M tokens, or None when the model is not in the table.

        ``batch``: the Batch API's prices (see the module docstring).
        """
        p = self.models.get(model)
        if p is None:
            keys = [k for k in self.models if model.startswith(k)]
            if not keys:
                return None
            p = self.models[max(keys, key=len)]
        if batch:
            return (float(p.get("batch_input", p["input"] * self.batch_discount)),
                    float(p.get("batch_output", p["output"] * self.batch_discount)))
        return float(p["input"]), float(p["output"])

    def cost(self, model: str, prompt_tokens: int | None, completion_tokens: int | None,
             batch: bool = False) -> float | None:
        """USD of one call (``batch``: at batch prices), or None when price or usage is unknown."""
        p = self.price(model, batch)
        if p is None or prompt_tokens is None or completion_tokens is None:
            return None
        return (p[0] * prompt_tokens + p[1] * completion_tokens) / 1e6
