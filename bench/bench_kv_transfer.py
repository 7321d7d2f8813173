"""KV handoff bandwidth over loopback vs a raw socket send of the same bytes (same run).

    .venv/bin/python -m bench.bench_kv_transfer [--tokens 2048] [--repeats 3]

The receiver runs in a second process, as a decode worker would. The KV layout is Qwen3-0.6B's
(28 layers, 8 KV heads, head_dim 128, bf16: 112 KiB per token). Prints, never asserts.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import time

import torch

from pdserve.runtime.checkpoints.identity import ModelIdentity
from pdserve.runtime.disagg.kv_transfer import KVReceiverServer, KVSender, Offer
from pdserve.runtime.engine.kv_cache import KVCache, KVLayout

LAYOUT = KVLayout(num_layers=28, num_kv_heads=8, head_dim=128, block_size=16, dtype="bfloat16")
BENCH_IDENTITY = ModelIdentity("qwen3-0.6b-layout", "none", "bfloat16", 16)  # both sides alike


class FillEverything:
    """Receiver hooks that take every offered block into the pool's leading ids."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks

    def reserve(self, offer: Offer) -> tuple[int, list[int]]:
        # Reversed ids: no two consecutive blocks are neighbours in the pool (the worst case).
        return 0, list(reversed(range(-(-len(offer.prompt_token_ids) // LAYOUT.block_size))))

    def complete(self, transfer_id: str, nbytes: int, seconds: float) -> None:
        pass

    def fail(self, transfer_id: str, reason: str) -> None:
        print(f"transfer {transfer_id} failed: {reason}")


def kv_receiver(num_blocks: int, device: str, ready: mp.Queue) -> None:
    pool = KVCache(LAYOUT, num_blocks, torch.device(device))
    server = KVReceiverServer(pool, FillEverything(num_blocks), "127.0.0.1", 0,
                              identity=BENCH_IDENTITY, timeout=60)
    server.start()
    ready.put(server.port)
    time.sleep(3600)


def raw_receiver(nbytes: int, ready: mp.Queue) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    ready.put(listener.getsockname()[1])
    buf = bytearray(nbytes)
    view = memoryview(buf)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            got = 0
            while got < nbytes:
                n = conn.recv_into(view[got:])
                if n == 0:
                    break
                got += n
            if got < nbytes:
                break
            conn.sendall(b"k")


def start(target, *args) -> tuple[mp.Process, int]:
    ready: mp.Queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    return proc, ready.get(timeout=120)


def bench_tcp(tokens: int, repeats: int) -> None:
    num_blocks = -(-tokens // LAYOUT.block_size)
    nbytes = num_blocks * LAYOUT.bytes_per_block
    source = KVCache(LAYOUT, num_blocks, torch.device("cpu"))
    source.kv.normal_()
    payload = source.kv.reshape(-1).view(torch.uint8).numpy()
    kv_proc, kv_port = start(kv_receiver, num_blocks, "cpu")
    raw_proc, raw_port = start(raw_receiver, nbytes)
    try:
        sender = KVSender(source, "tcp", identity=BENCH_IDENTITY, timeout=60)
        raw = socket.create_connection(("127.0.0.1", raw_port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ids = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0)).tolist()
        sender.push(f"127.0.0.1:{kv_port}", Offer("warmup", [0] * tokens, 0), ids)
        kv_times, raw_times = [], []
        for i in range(repeats):
            start_t = time.perf_counter()
            sender.push(f"127.0.0.1:{kv_port}", Offer(f"t{i}", [0] * tokens, 0), ids)
            kv_times.append(time.perf_counter() - start_t)
            start_t = time.perf_counter()
            raw.sendall(memoryview(payload))
            raw.recv(1)
            raw_times.append(time.perf_counter() - start_t)
        kv_bw, raw_bw = nbytes / min(kv_times) / 1e9, nbytes / min(raw_times) / 1e9
        print(f"KV handoff over loopback TCP: {tokens} tokens, {nbytes / 2**20:.0f} MiB "
              f"({LAYOUT.num_layers} layers, bf16, block {LAYOUT.block_size})")
        print(f"  pdserve tcp transport : {min(kv_times) * 1e3:8.1f} ms  {kv_bw:6.2f} GB/s")
        print(f"  raw socket sendall    : {min(raw_times) * 1e3:8.1f} ms  {raw_bw:6.2f} GB/s")
        print(f"  ratio (goal >= 0.8)   : {kv_bw / raw_bw:.2f}")
        sender.close()
        raw.close()
    finally:
        kv_proc.kill()
        raw_proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench_tcp(args.tokens, args.repeats)


if __name__ == "__main__":
    main()
