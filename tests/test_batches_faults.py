"""Exactly once under SIGKILL: ``selfevo collect --mode batch`` killed at each phase, then rerun.

The process is killed at an exact point by a test-only wrapper of the batch path's methods
(``tests/kill_at_batch_phase.py``; production code carries no fault hook): after writing a shard file but before registering it,
after an upload before its file id is recorded, after creating a batch before its id is
recorded, after a poll, and after the first chunk of an output file is settled. The rerun
must finish the collection with every request submitted in exactly one batch, answered
once, recorded once (one attempt row per call), and nothing flagged possibly billed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_batches import assert_exactly_once, batch_args, submitted_ids  # noqa: E402
from test_collect import query, seed  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
N = 6  # prompts: 18 calls


KILL_AT = Path(__file__).resolve().parent / "kill_at_batch_phase.py"


def run_collect(db: str, server, point: str, *extra: str) -> subprocess.CompletedProcess:
    """``selfevo collect --mode batch`` in a process killed at ``point`` (``none``: not
    killed), settling two result lines per transaction."""
    cmd = [sys.executable, str(KILL_AT), point, "2", *batch_args(db, server, *extra)]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, "SELFEVO_DB": db},
                          capture_output=True, text=True, timeout=180)


# Two phases in the default suite (about 8 s each: two selfevo processes); all under -m slow.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("point", [pytest.param("shard:2", marks=SLOW),
                                   pytest.param("upload", marks=SLOW), "create",
                                   pytest.param("poll:2", marks=SLOW), "settle:2"])
def test_killed_at_any_phase_the_rerun_settles_everything_exactly_once(db, server, point):
    seed(db, N)
    killed = run_collect(db, server, point, "--shard-requests", "4")
    assert killed.returncode == -9, killed.stderr[-2000:]
    before = query(db, "SELECT state, count(*) FROM batches GROUP BY 1")
    done = run_collect(db, server, "none", "--shard-requests", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert query(db, "SELECT count(DISTINCT prompt_id) FROM records")[0][0] == N
    assert query(db, "SELECT count(*) FROM records")[0][0] == N
    assert_exactly_once(db, server, 3 * N)
    statuses = [s for (s,) in query(db, "SELECT status FROM runs WHERE command = 'collect' "
                                        "ORDER BY started_at")]
    assert statuses == ["killed", "ok"]
    # Every batch the provider has is one the store knows (none created twice, none lost).
    known = {b for (b,) in query(db, "SELECT batch_id FROM batches WHERE batch_id IS NOT NULL")}
    assert known == set(server.batches.batches)
    if point == "upload":  # the unrecorded upload was uploaded again (an orphan file, free)
        shards = query(db, "SELECT count(*) FROM batches")[0][0]
        uploads = [f for f in server.batches.files.values() if f["purpose"] == "batch"]
        assert len(uploads) == shards + 1
    if point == "create":  # the batch created before the kill was adopted, not re-created
        assert server.batches.creates() == len(known)
        assert ("uploaded", 1) in before
    if point == "shard:2":  # the shard written but not registered was written again
        assert sum(n for _, n in before) == 1 and sum(submitted_ids(server).values()) == 3 * N
    if point == "settle:2":  # resumed mid-file: the lines settled before the kill were skipped
        settled = [json.loads(s) for (s,) in query(db, "SELECT settled FROM batches "
                                                       "WHERE settled IS NOT NULL")]
        assert sum(s.get("already", 0) for s in settled) == 4, settled  # two chunks of two lines
