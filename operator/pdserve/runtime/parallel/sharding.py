"""Which part of each weight a tensor-parallel rank holds (pure: no torch).

Column-parallel (output rows split): q/k/v by attention and KV heads, gate/up by the MLP's
intermediate size. Row-parallel (input columns split): o_proj and down_proj, whose partial
outputs are summed by an all-reduce; their bias is added once, by rank 0. Everything else
(embeddings, norms, the LM head) is replicated. The KV cache is sharded by KV head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW_PARALLEL = ("o_proj", "down_proj")


class ParallelismError(ValueError):
    """A model that cannot be split over this many devices."""


class Parallel(Protocol):
    """Where this process stands in its replica: what the model and the runner need."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def agree_min(self, value: int) -> int: ...


class Single:
    """No parallelism: the whole model in this process."""

    rank = 0
    size = 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def agree_min(self, value: int) -> int:
        return value


SINGLE = Single()


@dataclass(frozen=True)
class Shard:
    """How a rank reads one checkpoint tensor: its slice along `dim` from `start`, or nothing
    (zeros) when `zero` (the row-parallel bias on ranks other than 0)."""

    dim: int | None = None  # None: the whole tensor
    start: int = 0
    zero: bool = False


def check_divisible(num_heads: int, num_kv_heads: int, intermediate_size: int,
                    size: int) -> None:
    for what, count in (("attention heads", num_heads), ("KV heads", num_kv_heads),
                        ("MLP intermediate size", intermediate_size)):
        if count % size:
            raise ParallelismError(
                f"tensor parallel size {size} does not divide the model's {count} {what}; "
                f"use a size that divides {num_kv_heads} KV heads")


def shard_of(hf_name: str, local_rows: dict[str, int], rank: int) -> Shard:
    """The shard of checkpoint tensor `hf_name` for `rank`; `local_rows` gives, per projection
    name, the rank's share of the split dimension (head count x head dim, or intermediate)."""
    parts = hf_name.rsplit(".", 2)
    if len(parts) < 3:
        return Shard()
    projection, kind = parts[-2], parts[-1]
    if projection in COLUMN_PARALLEL:
        return Shard(dim=0, start=rank * local_rows[projection])
    if projection in ROW_PARALLEL:
        if kind == "bias":
            return Shard(zero=rank != 0)
        return Shard(dim=1, start=rank * local_rows[projection])
    return Shard()
