"""`tcp` transport: blocks travel as raw bytes in DATA frames, a chunk of blocks per frame.

The sender gathers a chunk of blocks into one contiguous tensor (`read_blocks`) and hands its
memory to `sendall` through a memoryview, no serialization; the receiver `recv_into`s a reusable
staging buffer and scatters it into the reserved blocks (`write_blocks`). Chunks of a few MiB keep
the stream flowing without holding the whole prompt's KV twice in memory. A second thread gathers
the next chunk while the current one is on the wire.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from pdserve.runtime.kv_transfer.protocol import DATA, FramedSocket, KVTransferError
from pdserve.runtime.kv_transfer.transport import KVPool, Transport, block_nbytes

CHUNK_BYTES = 8 * 1024 * 1024


def _chunks(ids: list[int], per_chunk: int) -> list[list[int]]:
    return [ids[i : i + per_chunk] for i in range(0, len(ids), per_chunk)]


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.contiguous().cpu().reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy())


class TcpTransport(Transport):
    name = "tcp"

    def __init__(self) -> None:
        self._staging: torch.Tensor | None = None

    def send_blocks(self, conn: FramedSocket, pool: KVPool, src_ids: list[int],
                    dst_ids: list[int]) -> int:
        per_chunk = max(1, CHUNK_BYTES // block_nbytes(pool))
        chunks = _chunks(src_ids, per_chunk)
        sent = 0
        with ThreadPoolExecutor(max_workers=1) as gatherer:
            pending = gatherer.submit(lambda ids: _as_bytes(pool.read_blocks(ids)), chunks[0]) \
                if chunks else None
            for i in range(len(chunks)):
                assert pending is not None
                view = pending.result()
                if i + 1 < len(chunks):
                    pending = gatherer.submit(lambda ids: _as_bytes(pool.read_blocks(ids)),
                                              chunks[i + 1])
                conn.send_raw(DATA, view)
                sent += view.nbytes
        return sent

    def recv_blocks(self, conn: FramedSocket, pool: KVPool, dst_ids: list[int]) -> int:
        per_block = block_nbytes(pool)
        per_chunk = max(1, CHUNK_BYTES // per_block)
        kv = pool.kv
        received = 0
        for ids in _chunks(dst_ids, per_chunk):
            kind, length = conn.recv_header()
            expected = per_block * len(ids)
            if kind != DATA or length != expected:
                raise KVTransferError(f"expected a DATA frame of {expected} bytes, got kind {kind} "
                                      f"with {length} bytes")
            staging = self._staging_bytes(per_block * per_chunk)[:expected]
            conn.recv_into(memoryview(staging.numpy()))
            shape = (len(ids), kv.shape[0], kv.shape[1], *kv.shape[3:])
            pool.write_blocks(ids, staging.view(kv.dtype).view(shape).to(kv.device))
            received += expected
        return received

    def _staging_bytes(self, nbytes: int) -> torch.Tensor:
        if self._staging is None or self._staging.numel() < nbytes:
            self._staging = torch.empty(nbytes, dtype=torch.uint8)
        return self._staging
