"""`cuda-ipc` transport: a prefill and a decode process on the same GPU (one pod).

At the handshake the decode process shares its whole KV pool tensor once, as a CUDA IPC handle
(torch.multiprocessing's tensor reduction, pickled). The prefill process maps it, and each
transfer is then a device-to-device copy of the missing blocks straight into the decode pool's
reserved block ids: only block ids cross the socket, no KV bytes. The copy is synchronized
before DONE, so the decode process reads complete KV.

The handle is unpickled from the peer: this transport is meant for two processes of one pod.
"""

from __future__ import annotations

import pickle

import torch
from torch.multiprocessing.reductions import reduce_tensor

from pdserve.runtime.disagg.kv_transfer.protocol import IPC_HANDLE, FramedSocket, KVTransferError
from pdserve.runtime.disagg.kv_transfer.transport import KVPool, Transport


class CudaIpcTransport(Transport):
    name = "cuda-ipc"

    def __init__(self) -> None:
        self.peer_kv: torch.Tensor | None = None

    def unusable_with(self, pool: KVPool) -> str | None:
        if not pool.kv.is_cuda:
            return ("cuda-ipc needs both KV pools on one CUDA device, this one is on "
                    f"{pool.kv.device}: use --kv-transport tcp")
        return None

    def on_accept(self, conn: FramedSocket, pool: KVPool) -> None:
        rebuild, args = reduce_tensor(pool.kv)
        conn.send_raw(IPC_HANDLE, pickle.dumps((rebuild, args)))

    def on_accepted(self, conn: FramedSocket, pool: KVPool) -> None:
        if not pool.kv.is_cuda:
            raise KVTransferError("cuda-ipc needs the KV pool on a CUDA device")
        kind, length = conn.recv_header()
        if kind != IPC_HANDLE:
            raise KVTransferError("the decode worker did not share its KV pool (cuda-ipc)")
        rebuild, args = pickle.loads(conn.recv_payload(length))  # a same-pod peer, see above
        self.peer_kv = rebuild(*args)
        if self.peer_kv.device != pool.kv.device:
            raise KVTransferError(f"cuda-ipc peers are on different devices ({self.peer_kv.device}"
                                  f" vs {pool.kv.device}): use tcp")

    def send_blocks(self, conn: FramedSocket, pool: KVPool, src_ids: list[int],
                    dst_ids: list[int]) -> int:
        if self.peer_kv is None:
            raise KVTransferError("cuda-ipc used before the handshake shared the pool")
        if not src_ids:
            return 0
        device = pool.kv.device
        src = torch.tensor(src_ids, device=device)
        dst = torch.tensor(dst_ids, device=device)
        moved = pool.kv.index_select(2, src)
        self.peer_kv.index_copy_(2, dst, moved)
        torch.cuda.current_stream(device).synchronize()
        return moved.numel() * moved.element_size()

    def recv_blocks(self, conn: FramedSocket, pool: KVPool, dst_ids: list[int]) -> int:
        # The sender wrote into our pool directly; DONE (read by the caller) says it has finished.
        return len(dst_ids) * pool.kv[:, :, 0].numel() * pool.kv.element_size()
