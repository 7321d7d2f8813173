"""KV handoff bandwidth of each transport against a memcpy and a raw socket send of the same
bytes, side by side in one run.

    .venv/bin/python -m bench.bench_kv_transfer [--tokens 2048] [--repeats 5]
    UCX_TLS=tcp,self .venv/bin/python -m bench.bench_kv_transfer   # NIXL as between pods/hosts

The receivers run in second processes, as a decode worker would. The KV layout is Qwen3-0.6B's
(28 layers, 8 KV heads, head_dim 128, bf16: 112 KiB per token). Each transport is measured with
the blocks scattered (the decode side's ids reversed and the prefill side's shuffled: no two
neighbours, one descriptor or buffer per block and plane, the worst case) and in order (the best
case). Runs alternate between the methods; the best of each is printed. Prints, never asserts.

Between processes of one host NIXL's UCX reads with cross-memory attach (one copy, no socket);
the `process_vm_readv` row is that system call alone, in 4 MiB pieces from another process:
the most nixl can reach there without the knem or xpmem kernel modules.
pods have their own PID and IPC namespaces, so between pods (or hosts without RDMA) UCX falls
back to TCP: the second command measures that case.
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import os
import socket
import time

import torch

from pdserve.runtime.checkpoints.identity import ModelIdentity
from pdserve.runtime.disagg.kv_transfer import KVReceiverServer, KVSender, Offer
from pdserve.runtime.engine.kv_cache import KVCache, KVLayout

LAYOUT = KVLayout(num_layers=28, num_kv_heads=8, head_dim=128, block_size=16, dtype="bfloat16")
BENCH_IDENTITY = ModelIdentity("qwen3-0.6b-layout", "none", "bfloat16", 16)  # both sides alike


class FillEverything:
    """Receiver hooks that take every offered block into the pool's leading ids: reversed
    (no two consecutive blocks neighbours in the pool) unless the transfer id ends in "-ordered"."""

    def reserve(self, offer: Offer) -> tuple[int, list[int]]:
        ids = list(range(-(-len(offer.prompt_token_ids) // LAYOUT.block_size)))
        return 0, ids if offer.transfer_id.endswith("-ordered") else ids[::-1]

    def complete(self, transfer_id: str, nbytes: int, seconds: float) -> None:
        pass

    def fail(self, transfer_id: str, reason: str, cause: str = "transfer_error") -> None:
        print(f"transfer {transfer_id} failed ({cause}): {reason}")


def kv_receiver(num_blocks: int, device: str, ready: mp.Queue) -> None:
    pool = KVCache(LAYOUT, num_blocks, torch.device(device))
    server = KVReceiverServer(pool, FillEverything(), "127.0.0.1", 0,
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


def cma_source(nbytes: int, ready: mp.Queue) -> None:
    """Bytes another process reads with cross-memory attach: (pid, address) on `ready`."""
    held = torch.ones(nbytes, dtype=torch.uint8)  # touched: every page is resident
    ready.put((os.getpid(), held.data_ptr()))
    time.sleep(3600)


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


def cma_read(pid: int, remote: int, local: int, nbytes: int, chunk: int = 4 << 20) -> None:
    """process_vm_readv in `chunk`s: the kernel's cross-memory attach, which UCX's `cma`
    transport uses between processes of a host without the knem or xpmem modules."""
    libc = ctypes.CDLL(None, use_errno=True)
    for offset in range(0, nbytes, chunk):
        size = min(chunk, nbytes - offset)
        mine, theirs = IoVec(local + offset, size), IoVec(remote + offset, size)
        if libc.process_vm_readv(pid, ctypes.byref(mine), 1, ctypes.byref(theirs), 1, 0) != size:
            raise OSError(ctypes.get_errno(), "process_vm_readv")


def start(target, *args) -> tuple[mp.Process, int]:
    ready: mp.Queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    return proc, ready.get(timeout=120)


def bench_transports(tokens: int, repeats: int) -> None:
    num_blocks = -(-tokens // LAYOUT.block_size)
    nbytes = num_blocks * LAYOUT.bytes_per_block
    source = KVCache(LAYOUT, num_blocks, torch.device("cpu"))
    source.kv.normal_()
    payload = source.kv.reshape(-1).view(torch.uint8).numpy()
    copy_target = torch.empty_like(source.kv)
    kv_proc, kv_port = start(kv_receiver, num_blocks, "cpu")
    raw_proc, raw_port = start(raw_receiver, nbytes)
    cma_proc, (cma_pid, cma_address) = start(cma_source, nbytes)
    try:
        senders = {name: KVSender(source, name, identity=BENCH_IDENTITY, timeout=60)
                   for name in ("tcp", "nixl")}
        raw = socket.create_connection(("127.0.0.1", raw_port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        shuffled = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0)).tolist()
        ordered = list(range(num_blocks))

        def push(name: str, suffix: str, ids: list[int]) -> None:
            offer = Offer(f"{name}-{time.perf_counter_ns()}{suffix}", [0] * tokens, 0)
            senders[name].push(f"127.0.0.1:{kv_port}", offer, ids)

        def send_raw() -> None:
            raw.sendall(memoryview(payload))
            raw.recv(1)

        def memcpy() -> None:  # libc's, one thread: what one process moving the bytes costs
            ctypes.memmove(copy_target.data_ptr(), source.kv.data_ptr(), nbytes)

        def cross_memory_attach() -> None:  # the ceiling of nixl between processes here
            cma_read(cma_pid, cma_address, copy_target.data_ptr(), nbytes)

        methods = {"memcpy (one process)": memcpy,
                   "raw socket sendall": send_raw,
                   "process_vm_readv (4 MiB)": cross_memory_attach}
        for name in senders:
            methods[f"pdserve {name}, scattered"] = lambda n=name: push(n, "", shuffled)
            methods[f"pdserve {name}, in order"] = lambda n=name: push(n, "-ordered", ordered)
        for method in methods.values():  # warm-up: connections, handshakes, page faults
            method()
        times: dict[str, list[float]] = {label: [] for label in methods}
        for _ in range(repeats):
            for label, method in methods.items():
                start_t = time.perf_counter()
                method()
                times[label].append(time.perf_counter() - start_t)
        best = {label: nbytes / min(ts) / 1e9 for label, ts in times.items()}
        print(f"KV handoff: {tokens} tokens, {nbytes / 2**20:.0f} MiB ({LAYOUT.num_layers} layers, "
              f"bf16, block {LAYOUT.block_size}), best of {repeats}, receivers in other processes"
              f", UCX_TLS={os.environ.get('UCX_TLS', '(all)')}")
        print(f"  {'method':28} {'ms':>8} {'GB/s':>7} {'x memcpy':>9} {'x raw socket':>13}")
        for label, ts in times.items():
            print(f"  {label:28} {min(ts) * 1e3:8.1f} {best[label]:7.2f} "
                  f"{best[label] / best['memcpy (one process)']:9.2f} "
                  f"{best[label] / best['raw socket sendall']:13.2f}")
        for sender in senders.values():
            sender.close()
        raw.close()
    finally:
        kv_proc.kill()
        raw_proc.kill()
        cma_proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bench_transports(args.tokens, args.repeats)


if __name__ == "__main__":
    main()
