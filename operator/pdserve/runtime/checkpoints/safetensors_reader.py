"""Reading safetensors files tensor by tensor, straight into the model's parameters.

The format is an 8-byte little-endian header length, a JSON header (per tensor: dtype, shape,
data_offsets into the data section), then the data. Reads go through a bounded, reused buffer
and are converted into the destination chunk by chunk, so loading holds the weights in their
target dtype plus one chunk: no float32 copy of a bfloat16 model, and no mapped file pages
counted against the pod's memory as `mmap` would."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
CHUNK_BYTES = 8 << 20
MAX_HEADER_BYTES = 100 << 20


class CheckpointError(ValueError):
    """A safetensors file that cannot be read as one."""


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file, not read yet."""

    path: Path
    offset: int  # of its first byte in the file
    dtype: torch.dtype
    shape: tuple[int, ...]

    def copy_into(self, dest: torch.Tensor, dim: int | None = None, start: int = 0) -> None:
        """Read the tensor, or its slice from `start` along `dim` (0 or 1, as wide as `dest`:
        a tensor-parallel shard), into `dest` (contiguous; any dtype and device)."""
        if dim is None:
            self._copy_rows(dest.view(-1), 0, math.prod(self.shape))
            return
        row = math.prod(self.shape[1:])  # elements per row of dim 0
        if dim == 0:
            self._copy_rows(dest.view(-1), start * row, dest.shape[0] * row)
            return
        # Columns: whole rows are read a chunk at a time and their slice kept.
        width, total_rows = dest.shape[1], self.shape[0]
        rows_per_chunk = max(1, CHUNK_BYTES // (row * self.dtype.itemsize))
        buffer = torch.empty(min(rows_per_chunk, total_rows), row, dtype=self.dtype)
        with self.path.open("rb", buffering=0) as handle:
            handle.seek(self.offset)
            for first in range(0, total_rows, rows_per_chunk):
                part = buffer[:min(rows_per_chunk, total_rows - first)]
                _read_exactly(handle, part.view(torch.uint8).numpy(), self.path)
                dest[first:first + part.shape[0]].copy_(part[:, start:start + width])

    def _copy_rows(self, flat: torch.Tensor, first: int, count: int) -> None:
        """Elements [first, first + count) of the tensor into `flat`, one chunk at a time."""
        per_chunk = max(1, CHUNK_BYTES // self.dtype.itemsize)
        buffer = torch.empty(min(per_chunk, count), dtype=self.dtype)
        with self.path.open("rb", buffering=0) as handle:
            handle.seek(self.offset + first * self.dtype.itemsize)
            for at in range(0, count, per_chunk):
                part = buffer[:min(per_chunk, count - at)]
                _read_exactly(handle, part.view(torch.uint8).numpy(), self.path)
                flat[at:at + part.numel()].copy_(part)


def read_index(path: Path) -> dict[str, StoredTensor]:
    """The tensors of one safetensors file, by name, from its header."""
    with path.open("rb") as handle:
        size_bytes = handle.read(8)
        size = int.from_bytes(size_bytes, "little") if len(size_bytes) == 8 else -1
        if not 0 < size <= MAX_HEADER_BYTES:
            raise CheckpointError(f"{path} is not a safetensors file (bad header length)")
        try:
            header = json.loads(handle.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path} has an unreadable safetensors header") from None
    data_start = 8 + size
    file_size = path.stat().st_size
    found = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(n) for n in entry["shape"])
            begin, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has an unusable header entry "
                                  f"{entry!r}") from None
        if end - begin != math.prod(shape) * dtype.itemsize or data_start + end > file_size:
            raise CheckpointError(f"{path}: tensor {name!r} does not fit its data offsets")
        found[name] = StoredTensor(path, data_start + begin, dtype, shape)
    return found


def _read_exactly(handle: BinaryIO, into: object, path: Path) -> None:
    view = memoryview(into).cast("B")  # type: ignore[arg-type]
    while view:
        got = handle.readinto(view)
        if not got:
            raise CheckpointError(f"{path} ends inside a tensor's data")
        view = view[got:]
