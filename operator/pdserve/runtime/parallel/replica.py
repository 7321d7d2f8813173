"""Starting a tensor-parallel replica: rank 0 (the engine's process) starts one follower process
per other rank on its node, all join a torch.distributed group, and each builds its own shard
of the model and KV cache. On one node the group meets on loopback; a replica over several
nodes (a LeaderWorkerSet's pods) meets at `rendezvous`, rank 0's address: node k runs ranks
k*D .. k*D+D-1 (D devices a node), all followers, and no engine or HTTP server of its own.
`python -m pdserve.runtime.parallel.replica` is a follower's entry point."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

import torch

from pdserve.runtime.checkpoints.builtin import resolve_model_path
from pdserve.runtime.devices.resolve import resolve_device
from pdserve.runtime.engine.config import EngineComponents, EngineConfig, build_components
from pdserve.runtime.models.config import load_model_config
from pdserve.runtime.parallel.group import TensorParallelGroup
from pdserve.runtime.parallel.kv_shards import ShardedKVPool
from pdserve.runtime.parallel.runner import LeaderRunner, follow
from pdserve.runtime.parallel.sharding import check_divisible

_POLL_S = 0.5


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _threads_per_rank(ranks_here: int) -> int:
    # The CPU threads this process was given, shared out: the ranks compute at the same time.
    return max(1, torch.get_num_threads() // ranks_here)


def _check_divisible(config: EngineConfig) -> None:
    """Before starting processes that would all refuse the model."""
    cfg = load_model_config(resolve_model_path(config.model))
    check_divisible(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size,
                    config.tensor_parallel_size)


def _start_followers(config: EngineConfig, ranks: range, address: str,
                     threads: int) -> list[subprocess.Popen[bytes]]:
    settings = json.dumps(dataclasses.asdict(config))
    return [subprocess.Popen([sys.executable, "-m", "pdserve.runtime.parallel.replica",
                              "--rank", str(rank), "--address", address,
                              "--threads", str(threads), "--config", settings])
            for rank in ranks]


def build_replica(config: EngineConfig) -> EngineComponents:
    """Rank 0's components, its runner leading the followers (those of its node it starts)."""
    config.validate()
    _check_divisible(config)
    local = config.devices_per_node
    device = resolve_device(config.device, local)
    address = config.rendezvous or _free_address()
    threads = _threads_per_rank(local) if device.type == "cpu" else torch.get_num_threads()
    torch.set_num_threads(threads)
    followers = _start_followers(config, range(1, local), address, threads)
    try:
        group = TensorParallelGroup(0, config.tensor_parallel_size, address, device)
        parts = build_components(config, group)
    except BaseException:
        for follower in followers:
            follower.kill()
        raise
    leader = LeaderRunner(parts.runner, group, followers)
    parts.runner = leader  # type: ignore[assignment]
    parts.kv_pool = ShardedKVPool(parts.kv_cache, leader)
    return parts


def run_follower_node(config: EngineConfig, node_rank: int) -> int:
    """Node `node_rank` (> 0) of a replica over several nodes: run its ranks until rank 0
    stops them (exit 0) or one fails (the others are stopped; its exit code is returned, so
    the pod restarts and the LeaderWorkerSet recreates the group)."""
    config.validate()
    if not 0 < node_rank < config.num_nodes:
        raise ValueError(f"node rank {node_rank} is not a follower node of "
                         f"{config.num_nodes} nodes")
    _check_divisible(config)
    assert config.rendezvous is not None  # validate() requires it for several nodes
    local = config.devices_per_node
    resolve_device(config.device, local)  # refuse a node that lacks its devices, at once
    first = node_rank * local
    followers = _start_followers(config, range(first, first + local), config.rendezvous,
                                 _threads_per_rank(local))

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for follower in followers:
            follower.terminate()

    signal.signal(signal.SIGTERM, stop)
    while True:
        codes = [follower.poll() for follower in followers]
        failed = [code for code in codes if code not in (None, 0)]
        if failed or all(code == 0 for code in codes):
            break
        time.sleep(_POLL_S)
    for follower in followers:
        if follower.poll() is None:
            follower.kill()
        follower.wait()
    return failed[0] if failed and not stopping else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pdserve.runtime.parallel.replica",
                                     description="one follower rank of a tensor-parallel replica")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--address", required=True, help="rank 0's rendezvous HOST:PORT")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--config", required=True, help="the EngineConfig as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = EngineConfig(**json.loads(args.config))
    device = resolve_device(config.device, config.devices_per_node)
    group = TensorParallelGroup(args.rank, config.tensor_parallel_size, args.address, device)
    parts = build_components(config, group)
    follow(parts.runner, parts.kv_cache, group)
    group.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
