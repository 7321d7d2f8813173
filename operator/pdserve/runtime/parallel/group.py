"""The processes of one tensor-parallel replica, through torch.distributed: gloo on CPU, NCCL
for the all-reduces on CUDA (the step plans always go over gloo, they are CPU integers)."""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

# A collective that waits longer than this means a peer is gone: the step fails instead of
# hanging the worker (a long prefill on a slow CPU stays well inside it). It also bounds the
# wait at the rendezvous and for the first collective after loading weights, where the pods of
# a replica over several nodes arrive minutes apart (a peer that dies closes its connections,
# which fails the collective at once).
COLLECTIVE_TIMEOUT_S = 900


class TensorParallelGroup:
    def __init__(self, rank: int, size: int, address: str, device: torch.device):
        self.rank = rank
        self.size = size
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{address}", rank=rank,
                                world_size=size, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        self._control = dist.new_group(backend="gloo") if backend != "gloo" else None

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor

    def agree_min(self, value: int) -> int:
        """The smallest `value` of all ranks."""
        found = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(found, op=dist.ReduceOp.MIN, group=self._control)
        return int(found.item())

    def broadcast_plan(self, plan: list[int] | None) -> list[int]:
        """Rank 0 sends `plan`; the others receive it (their `plan` is None)."""
        length = torch.tensor([len(plan) if plan is not None else 0], dtype=torch.int64)
        dist.broadcast(length, src=0, group=self._control)
        values = (torch.tensor(plan, dtype=torch.int64) if plan is not None
                  else torch.empty(int(length.item()), dtype=torch.int64))
        if len(values):
            dist.broadcast(values, src=0, group=self._control)
        return [int(v) for v in values.tolist()]

    def gather(self, local: torch.Tensor, dim: int) -> torch.Tensor | None:
        """Every rank's `local`, concatenated along `dim` in rank order, on rank 0 (None on
        the others)."""
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(local, parts, dst=0)
        return torch.cat(parts, dim=dim) if parts is not None else None

    def scatter(self, whole: torch.Tensor | None, local: torch.Tensor, dim: int) -> None:
        """Rank 0 splits `whole` along `dim` into equal parts, one per rank, in rank order;
        each rank receives its part into `local`."""
        parts = ([part.contiguous() for part in whole.chunk(self.size, dim=dim)]
                 if whole is not None else None)
        dist.scatter(local, parts, src=0)

    def close(self) -> None:
        dist.destroy_process_group()
