"""Running one tensor-parallel replica's steps: rank 0 sends each step's plan, then every rank
runs the same forward pass over its shard (the all-reduces inside keep them in step); only
rank 0 computes logits and samples. Between steps rank 0 may send a KV command instead (the
handoff's gather or scatter, from a transfer thread): one lock keeps each plan and the
collectives that follow it together, so every rank sees them in one order."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from pdserve.runtime.engine.errors import RunnerBrokenError
from pdserve.runtime.engine.kv_cache import KVCache
from pdserve.runtime.engine.model_runner import ModelRunner, ScheduledChunk
from pdserve.runtime.parallel.group import TensorParallelGroup
from pdserve.runtime.parallel.kv_shards import serve_kv_command
from pdserve.runtime.parallel.step_plan import STOP, decode, encode

T = TypeVar("T")

FOLLOWER_EXIT_S = 30


class LeaderRunner:
    """Rank 0's runner: the engine calls it as it calls a ModelRunner."""

    def __init__(self, runner: ModelRunner, group: TensorParallelGroup,
                 followers: list[subprocess.Popen[bytes]]):
        self.runner = runner
        self.group = group
        self.followers = followers
        self.model = runner.model
        self._lock = threading.Lock()
        self._broken: str | None = None

    def execute(self, chunks: Sequence[ScheduledChunk]
                ) -> tuple[torch.Tensor, list[ScheduledChunk]]:
        return self.lead(encode(chunks), lambda: self.runner.execute(chunks))

    def lead(self, plan: list[int], work: Callable[[], T]) -> T:
        """Send the followers `plan`, then do rank 0's part of it (`work`), with no other plan
        in between."""
        with self._lock:
            if self._broken is not None:
                raise RunnerBrokenError(self._broken)
            try:
                for follower in self.followers:
                    if follower.poll() is not None:
                        raise RuntimeError(f"follower pid {follower.pid} exited with code "
                                           f"{follower.returncode}")
                self.group.broadcast_plan(plan)
                return work()
            except Exception as exc:
                # The ranks may now wait in different collectives: none can step again.
                self._broken = f"the tensor-parallel replica is broken: {exc}"
                raise RunnerBrokenError(self._broken) from exc

    def close(self) -> None:
        """Stop the followers and leave the group."""
        if self._broken is None and all(f.poll() is None for f in self.followers):
            with self._lock:
                self.group.broadcast_plan(STOP)
        for follower in self.followers:
            try:
                follower.wait(timeout=FOLLOWER_EXIT_S)
            except subprocess.TimeoutExpired:
                follower.kill()
                follower.wait()
        self.group.close()


def follow(runner: ModelRunner, kv_cache: KVCache, group: TensorParallelGroup) -> None:
    """A follower rank: run each step or command rank 0 sends, until it says stop (or goes
    away)."""
    while True:
        plan = group.broadcast_plan(None)
        if plan == STOP:
            return
        if plan and plan[0] < 0:
            serve_kv_command(plan, kv_cache, group)
            continue
        chunks = decode(plan)
        if chunks:
            runner.forward(chunks)
