"""cuda-ipc KV handoff between two processes on one GPU: block ids cross the socket, the KV is
copied device to device into the decode process's pool. Needs CUDA; skipped without it."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
import torch

from pdserve.runtime.disagg.kv_transfer import KVReceiverServer, KVSender, Offer
from pdserve.runtime.engine.kv_cache import KVCache, KVLayout

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
LAYOUT = KVLayout(num_layers=4, num_kv_heads=2, head_dim=64, block_size=16, dtype="bfloat16")


class ReportingHooks:
    def __init__(self, pool: KVCache, results: mp.Queue) -> None:
        self.pool = pool
        self.results = results
        self.ids: dict[str, list[int]] = {}

    def reserve(self, offer: Offer) -> tuple[int, list[int]]:
        num_blocks = -(-len(offer.prompt_token_ids) // LAYOUT.block_size)
        self.ids[offer.transfer_id] = list(range(num_blocks + 3, 3, -1))[:num_blocks - 1]
        return 1, self.ids[offer.transfer_id]  # the first block counts as cached

    def complete(self, transfer_id: str, nbytes: int, seconds: float) -> None:
        torch.cuda.synchronize()
        self.results.put((nbytes, self.pool.read_blocks(self.ids[transfer_id]).cpu()))

    def fail(self, transfer_id: str, reason: str) -> None:
        self.results.put((-1, reason))


def decode_process(ports: mp.Queue, results: mp.Queue) -> None:
    pool = KVCache(LAYOUT, 64, torch.device("cuda"))
    server = KVReceiverServer(pool, ReportingHooks(pool, results), "127.0.0.1", 0, timeout=30)
    server.start()
    ports.put(server.port)
    time.sleep(120)  # serves until the test kills it


@pytest.mark.timeout(180)
def test_cuda_ipc_handoff_between_processes():
    ctx = mp.get_context("spawn")
    ports, results = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=decode_process, args=(ports, results), daemon=True)
    proc.start()
    try:
        port = ports.get(timeout=120)
        source = KVCache(LAYOUT, 64, torch.device("cuda"))
        source.kv.normal_()
        sender = KVSender(source, "cuda-ipc", timeout=30)
        src = [9, 2, 40, 41, 7]  # 5 blocks: 1 cached on the decode side, 4 travel
        result = sender.push(f"127.0.0.1:{port}", Offer("t", list(range(70)), 1), src)
        nbytes, received = results.get(timeout=60)
        assert nbytes == result.bytes == 4 * LAYOUT.bytes_per_block
        assert torch.equal(received, source.read_blocks(src[1:]).cpu())
        sender.close()
    finally:
        proc.kill()
