"""Starting a tensor-parallel replica: rank 0 (the engine's process) starts one follower process
per other rank on this host, all join a torch.distributed group over loopback, and each builds
its own shard of the model and KV cache. `python -m pdserve.runtime.parallel.replica` is the
follower's entry point."""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import subprocess
import sys

import torch

from pdserve.runtime.checkpoints.builtin import resolve_model_path
from pdserve.runtime.devices.resolve import resolve_device
from pdserve.runtime.engine.config import EngineComponents, EngineConfig, build_components
from pdserve.runtime.models.config import load_model_config
from pdserve.runtime.parallel.group import TensorParallelGroup
from pdserve.runtime.parallel.kv_shards import ShardedKVPool
from pdserve.runtime.parallel.runner import LeaderRunner, follow
from pdserve.runtime.parallel.sharding import check_divisible


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _threads_per_rank(size: int) -> int:
    # The CPU threads this process was given, shared out: the ranks compute at the same time.
    return max(1, torch.get_num_threads() // size)


def build_replica(config: EngineConfig) -> EngineComponents:
    """Rank 0's components, its runner leading the follower processes it starts."""
    size = config.tensor_parallel_size
    cfg = load_model_config(resolve_model_path(config.model))
    check_divisible(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size,
                    size)  # before starting processes that would all refuse it
    device = resolve_device(config.device, size)
    address = _free_address()
    threads = _threads_per_rank(size) if device.type == "cpu" else torch.get_num_threads()
    torch.set_num_threads(threads)
    settings = json.dumps(dataclasses.asdict(config))
    followers = [subprocess.Popen([sys.executable, "-m", "pdserve.runtime.parallel.replica",
                                   "--rank", str(rank), "--address", address,
                                   "--threads", str(threads), "--config", settings])
                 for rank in range(1, size)]
    try:
        group = TensorParallelGroup(0, size, address, device)
        parts = build_components(config, group)
    except BaseException:
        for follower in followers:
            follower.kill()
        raise
    leader = LeaderRunner(parts.runner, group, followers)
    parts.runner = leader  # type: ignore[assignment]
    parts.kv_pool = ShardedKVPool(parts.kv_cache, leader)
    return parts


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
    device = resolve_device(config.device, config.tensor_parallel_size)
    group = TensorParallelGroup(args.rank, config.tensor_parallel_size, args.address, device)
    parts = build_components(config, group)
    follow(parts.runner, parts.kv_cache, group)
    group.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
