"""The price table: USD per 1M input / output tokens by model name.

``generation/prices.json`` ships with selfevo; ``--prices FILE`` (same layout) overrides its
entries. A model is priced by exact name, else by the longest name that prefixes it.
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

    def __init__(self, models: dict[str, dict[str, float]]):
        self.models = models

    @classmethod
    def load(cls, override: str | os.PathLike[str] | None = None) -> PriceTable:
        """The shipped table, with ``override``'s entries (same layout) on top."""
        text = SHIPPED_PRICES.read_text("utf-8")
        models = dict(json.loads(text)["models"])
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
        return cls(models)

    def price(self, model: str) -> tuple[float, float] | None:
        """(input, output) USD per 1M tokens, or None when the model is not in the table."""
        p = self.models.get(model)
        if p is None:
            keys = [k for k in self.models if model.startswith(k)]
            if not keys:
                return None
            p = self.models[max(keys, key=len)]
        return float(p["input"]), float(p["output"])

    def cost(self, model: str, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        """USD of one call, or None when the price or the usage is unknown."""
        p = self.price(model)
        if p is None or prompt_tokens is None or completion_tokens is None:
            return None
        return (p[0] * prompt_tokens + p[1] * completion_tokens) / 1e6
