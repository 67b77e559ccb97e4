"""Load a trained LoRA adapter into a running OpenAI-compatible server (vLLM's runtime API).

``selfevo evolve --serve URL`` trains each round's student as a LoRA adapter over the base
model that the server at ``URL`` already serves, then asks the server to load it under a name
of its own, so M_{t+1} is reached as ``openai:NAME@URL`` like any other served model. vLLM
exposes this when started with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``:
``POST {URL}/load_lora_adapter {"lora_name": ..., "lora_path": ...}``. The path is read by
the server, so it must see the same filesystem (same machine or a shared mount).

Loading is idempotent: an adapter the server already lists under ``GET {URL}/models`` is not
loaded again (after a server restart it is, which is how a resumed evolve finds its student).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from generation.backends.openai_backend import (
    DEFAULT_KEY_ENV,
    redact,
    strip_credentials,
    transport_url,
)
from generation.errors import GenerationError

ENABLE_HINT = ("start vLLM with --enable-lora (and --max-lora-rank ≥ the adapter's r) and the "
               "environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")


def _request(url: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, str]:
    """(status, text) of a GET (no body) or JSON POST; the key comes from the environment."""
    data = None if body is None else json.dumps(body).encode()
    plain, auth = transport_url(url)  # URL credentials travel as a Basic header
    req = urllib.request.Request(plain, data=data, method="GET" if body is None else "POST")
    req.add_header("Content-Type", "application/json")
    key = os.environ.get(DEFAULT_KEY_ENV)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    for name, value in auth.items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise GenerationError(f"cannot reach the model server at {strip_credentials(url)}: "
                            f"{redact(str(getattr(exc, 'reason', exc)), [key or ''])}; is it "
                            "running?") from None


def served_models(base_url: str, timeout: float = 30.0) -> list[str]:
    """The model ids the server lists (base model and loaded adapters)."""
    status, text = _request(base_url.rstrip("/") + "/models", None, timeout)
    if status != 200:
        raise GenerationError(f"GET {strip_credentials(base_url)}/models answered {status}: "
                            f"{redact(text)}")
    try:
        return [m["id"] for m in json.loads(text)["data"]]
    except (ValueError, KeyError, TypeError):
        raise GenerationError(f"{strip_credentials(base_url)}/models did not return a model "
                            "list; is it an OpenAI-compatible server?") from None


def ensure_adapter(base_url: str, name: str, path: str | Path, timeout: float = 300.0) -> bool:
    """Make the server at ``base_url`` serve the adapter folder ``path`` as model ``name``.

    Returns True when it was loaded now, False when the server already had it.
    """
    folder = Path(path).resolve()
    if not (folder / "adapter_config.json").exists():
        raise GenerationError(f"{folder} is not a LoRA adapter folder (no adapter_config.json); "
                            "--serve needs LoRA training (not --train full=true)")
    if name in served_models(base_url):
        return False
    status, text = _request(base_url.rstrip("/") + "/load_lora_adapter",
                            {"lora_name": name, "lora_path": str(folder)}, timeout)
    if status == 200:
        return True
    if status == 400 and "already" in text.lower():  # loaded between our two requests
        return False
    if status == 404 and "adapter" in text.lower():  # vLLM: "No adapter found for <path>"
        raise GenerationError(f"the server at {strip_credentials(base_url)} cannot read adapter "
                            f"{folder}: {redact(text)}. It must see the same filesystem "
                            "(same machine or a shared mount)")
    if status in (404, 405):
        raise GenerationError(f"{strip_credentials(base_url)} has no runtime LoRA loading "
                            f"(POST load_lora_adapter answered {status}): {ENABLE_HINT}")
    raise GenerationError(f"the server at {strip_credentials(base_url)} refused adapter {name!r} "
                        f"from {folder} ({status}): {redact(text)}. Check that it serves the "
                        f"same base model and can read that path; {ENABLE_HINT}")
