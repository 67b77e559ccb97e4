"""Batch generation: a stage's requests as Batch JSONL shards, answered exactly once.

A second way to run the ledger's send step (:class:`generation.ledger.Completion`): the
misses are written as shards (``custom_id`` = call id, :mod:`.shards`), registered with
their calls (:mod:`.tables`, migration ``m007_batches``), uploaded and submitted to the
provider's Batch API (:mod:`.provider`), polled, and settled line by line into the ledger
(:mod:`.settle`, :mod:`.results`) — or, with ``--mode file``, left for any engine and
ingested later. :mod:`.drive` has the state machine; :mod:`.commands` the
``selfevo batches`` library; docs/collect.md ("Batch") the guarantees.
"""

from generation.batches.options import (
    MODES,
    BatchesOpen,
    BatchOptions,
    batch_display,
    check_batchable,
    load_backend_for,
    mode_options,
)

__all__ = ["MODES", "BatchOptions", "BatchesOpen", "batch_display", "check_batchable",
           "load_backend_for", "mode_options"]
