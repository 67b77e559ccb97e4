"""An ``hf:`` backend answered by several worker processes (bench/experiment.py).

On a CPU shared by several processes a second torch thread per process mostly waits for a
core (``python bench/experiment.py threads`` times 1 process x 2 threads against 2 x 1 on
the same answers; docs/experiments.md: 2 x 1 was 4.7-7x faster while other jobs held the
cores). :class:`PoolBackend` keeps ``workers`` spawned processes, each with the model loaded
once and ``threads`` torch threads, and splits every batch between them (length-sorted,
dealt round-robin so each gets short and long prompts). Its ``spec`` and ``endpoint`` are
those of :class:`generation.backends.hf.HFBackend` for the same spec, so its calls land in
the ledger under exactly the ids an in-process run would use (a cached call is a cache hit
whichever ran it). Greedy answers do not depend on how a batch is split; sampled ones depend
on it (the hf backend seeds each micro-batch from its content), deterministically for a
given ``workers``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from generation.backends.base import Backend, BeforeSend, ChatRequest, ChatResult, OnResult


def _serve(spec: str, threads: int, conn: Any, options: dict[str, Any]) -> None:
    """A worker: load the model once, then answer each batch it is sent, result by result."""
    import torch

    torch.set_num_threads(threads)
    from generation.backends import load_backend

    backend = load_backend(spec, **options)
    while True:
        batch = conn.recv()
        if batch is None:
            break
        backend.generate(batch, on_result=lambda i, r: conn.send((i, r)))
        conn.send(None)  # the batch is done
    backend.close()


class PoolBackend(Backend):
    """``hf:MODEL[+ADAPTER]`` answered by ``workers`` processes of ``threads`` threads each."""

    def __init__(self, spec: str, *, workers: int = 2, threads: int = 1, **options: Any):
        import multiprocessing as mp

        from generation.backends.hf import HFBackend

        identity = HFBackend.from_spec(spec, **options)  # names and fingerprints; not loaded
        self.spec, self.endpoint = identity.spec, identity.endpoint
        ctx = mp.get_context("spawn")  # a fresh interpreter: no torch state inherited
        self.conns, self.procs = [], []
        for _ in range(max(1, workers)):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(spec, threads, theirs, options), daemon=True)
            proc.start()
            self.conns.append(mine)
            self.procs.append(proc)

    def generate(self, requests: Sequence[ChatRequest], on_result: OnResult | None = None,
                 before_send: BeforeSend | None = None) -> list[ChatResult]:
        """Deal the requests to the workers; ``on_result`` hears each as it finishes."""
        from multiprocessing.connection import wait

        order = sorted(range(len(requests)),
                       key=lambda i: len(json.dumps(requests[i].messages)))
        shards = [order[k::len(self.conns)] for k in range(len(self.conns))]
        busy = {}
        for conn, shard in zip(self.conns, shards, strict=True):
            if shard:
                conn.send([requests[i] for i in shard])
                busy[conn] = shard
        results: list[ChatResult | None] = [None] * len(requests)
        while busy:
            for conn in wait(list(busy)):
                msg = conn.recv()
                if msg is None:
                    del busy[conn]
                    continue
                local, result = msg
                i = busy[conn][local]
                results[i] = result
                if on_result is not None:
                    on_result(i, result)
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Stop the workers (their models go with them)."""
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
        self.conns, self.procs = [], []
