"""Running one tensor-parallel replica's steps: rank 0 sends each step's plan, then every rank
runs the same forward pass over its shard (the all-reduces inside keep them in step); only
rank 0 computes logits and samples."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import torch

from pdserve.runtime.engine.model_runner import ModelRunner, ScheduledChunk
from pdserve.runtime.parallel.group import TensorParallelGroup
from pdserve.runtime.parallel.step_plan import STOP, decode, encode

FOLLOWER_EXIT_S = 30


class LeaderRunner:
    """Rank 0's runner: the engine calls it as it calls a ModelRunner."""

    def __init__(self, runner: ModelRunner, group: TensorParallelGroup,
                 followers: list[subprocess.Popen[bytes]]):
        self.runner = runner
        self.group = group
        self.followers = followers
        self.model = runner.model

    def execute(self, chunks: Sequence[ScheduledChunk]
                ) -> tuple[torch.Tensor, list[ScheduledChunk]]:
        for follower in self.followers:
            if follower.poll() is not None:
                raise RuntimeError(f"tensor-parallel follower (pid {follower.pid}) exited "
                                   f"with code {follower.returncode}")
        self.group.broadcast_plan(encode(chunks))
        return self.runner.execute(chunks)

    def close(self) -> None:
        """Stop the followers and leave the group."""
        if all(follower.poll() is None for follower in self.followers):
            self.group.broadcast_plan(STOP)
        for follower in self.followers:
            try:
                follower.wait(timeout=FOLLOWER_EXIT_S)
            except subprocess.TimeoutExpired:
                follower.kill()
                follower.wait()
        self.group.close()


def follow(runner: ModelRunner, group: TensorParallelGroup) -> None:
    """A follower rank: run each step rank 0 plans, until it says stop (or goes away)."""
    while True:
        chunks = decode(group.broadcast_plan(None))
        if chunks is None:
            return
        if chunks:
            runner.forward(chunks)
