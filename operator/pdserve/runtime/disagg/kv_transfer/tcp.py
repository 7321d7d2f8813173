"""`tcp` transport: the missing blocks travel as raw bytes in one DATA frame.

Wire order: chunks of a few MiB of blocks; within a chunk, for each layer, K then V, the chunk's
blocks in transfer order (one block's slice of one layer's K or V is contiguous in the pool).
For a pool in host memory nothing is copied in Python: the sender hands `sendmsg` a list of
memoryviews of the pool's own memory (runs of consecutive blocks merged) and the receiver
`recvmsg_into`s straight into the reserved blocks' memory (scatter/gather I/O). Any other pool
(on CUDA, or a tensor-parallel replica's shards) goes through host staging, chunk by chunk,
with the pool's read_blocks/write_blocks.
"""

from __future__ import annotations

import socket

import torch

from pdserve.runtime.disagg.kv_transfer.protocol import DATA, HEADER, FramedSocket, KVTransferError
from pdserve.runtime.disagg.kv_transfer.transport import KVPool, Transport, block_nbytes

CHUNK_BYTES = 8 * 1024 * 1024
MAX_IOV = 512  # buffers per sendmsg/recvmsg_into call (Linux IOV_MAX is 1024)


def pool_views(kv: torch.Tensor, block_ids: list[int]) -> list[memoryview]:
    """The memory of `block_ids` in host pool `kv`, in wire order, consecutive blocks merged."""
    flat = memoryview(kv.reshape(-1).view(torch.uint8).numpy())
    slice_bytes = kv[0, 0, 0].numel() * kv.element_size()  # one block of one layer's K or V
    runs: list[tuple[int, int]] = []
    for block in block_ids:
        if runs and runs[-1][0] + runs[-1][1] == block:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((block, 1))
    views = []
    num_blocks = kv.shape[2]
    for plane in range(kv.shape[0] * kv.shape[1]):  # (layer, K/V) planes
        base = plane * num_blocks
        for start, count in runs:
            offset = (base + start) * slice_bytes
            views.append(flat[offset : offset + count * slice_bytes])
    return views


def send_views(sock: socket.socket, views: list[memoryview]) -> None:
    pending = [v for v in views if v.nbytes]
    first = 0
    while first < len(pending):
        sent = sock.sendmsg(pending[first : first + MAX_IOV])
        first = _advance(pending, first, sent)


def recv_views(sock: socket.socket, views: list[memoryview]) -> None:
    pending = [v for v in views if v.nbytes]
    first = 0
    while first < len(pending):
        got = sock.recvmsg_into(pending[first : first + MAX_IOV])[0]
        if got == 0:
            raise KVTransferError("connection closed by the peer mid-transfer")
        first = _advance(pending, first, got)


def _advance(pending: list[memoryview], first: int, nbytes: int) -> int:
    """Consume nbytes from pending[first:]; returns the index of the first unfinished view."""
    while nbytes:
        size = pending[first].nbytes
        if nbytes >= size:
            nbytes -= size
            first += 1
        else:
            pending[first] = pending[first][nbytes:]
            nbytes = 0
    return first


class TcpTransport(Transport):
    name = "tcp"

    def send_blocks(self, conn: FramedSocket, pool: KVPool, src_ids: list[int],
                    dst_ids: list[int]) -> int:
        nbytes = len(src_ids) * block_nbytes(pool)
        conn.sock.sendall(_data_header(nbytes))
        host = host_memory(pool)
        if host is None:
            for ids in _chunks(src_ids, pool):
                data = pool.read_blocks(ids).cpu()
                conn.sock.sendall(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
        else:
            send_views(conn.sock, [v for ids in _chunks(src_ids, pool)
                                   for v in pool_views(host, ids)])
        return nbytes

    def recv_blocks(self, conn: FramedSocket, pool: KVPool, dst_ids: list[int]) -> int:
        nbytes = len(dst_ids) * block_nbytes(pool)
        kind, length = conn.recv_header()
        if kind != DATA or length != nbytes:
            raise KVTransferError(f"expected a DATA frame of {nbytes} bytes, got kind {kind} "
                                  f"with {length} bytes")
        host = host_memory(pool)
        if host is not None:
            recv_views(conn.sock, [v for ids in _chunks(dst_ids, pool)
                                   for v in pool_views(host, ids)])
            return nbytes
        layout = pool.layout
        for ids in _chunks(dst_ids, pool):
            staging = torch.empty(layout.blocks_shape(len(ids)), dtype=layout.torch_dtype,
                                  pin_memory=torch.cuda.is_available())
            conn.recv_into(memoryview(staging.reshape(-1).view(torch.uint8).numpy()))
            pool.write_blocks(ids, staging)
        return nbytes


def host_memory(pool: KVPool) -> torch.Tensor | None:
    """The pool tensor when it is in host memory (a socket reads and writes it in place)."""
    memory = pool.memory()
    return memory if memory is not None and memory.device.type == "cpu" else None


def _chunks(ids: list[int], pool: KVPool) -> list[list[int]]:
    per_chunk = max(1, CHUNK_BYTES // block_nbytes(pool))
    return [ids[i : i + per_chunk] for i in range(0, len(ids), per_chunk)]


def _data_header(nbytes: int) -> bytes:
    return HEADER.pack(DATA, nbytes)
