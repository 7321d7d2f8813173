"""Engine configuration and building the engine's torch parts: model, KV cache, runner.

Without an explicit `num_kv_blocks` the cache is sized from memory: on CUDA
`gpu_memory_utilization` of the device less the measured peak of the largest step
(engine/memory_profile.py), on TPU that fraction of the device less what is in use after
loading, on CPU (and XLA's CPU backend) `cpu_kv_cache_bytes` (capped at what max_num_seqs
full-length sequences could use). On XLA the
runner is the bucketed one, warmed up here: every graph it will run is compiled before the
engine serves.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pdserve.runtime.checkpoints.builtin import resolve_model_path
from pdserve.runtime.checkpoints.tokenizer import Tokenizer
from pdserve.runtime.checkpoints.weights import iter_weights
from pdserve.runtime.compression.config import NO_COMPRESSION, KVCompression
from pdserve.runtime.devices.resolve import keep_cpu_memory_mapped, resolve_device, resolve_dtype
from pdserve.runtime.engine.bucketed_runner import BucketedRunner
from pdserve.runtime.engine.buckets import Buckets, CompiledDevice
from pdserve.runtime.engine.kv_cache import KVCache, KVLayout, KVPool
from pdserve.runtime.engine.memory_profile import cuda_kv_budget
from pdserve.runtime.engine.model_runner import ModelRunner
from pdserve.runtime.models.config import ModelConfig, load_model_config
from pdserve.runtime.models.llama import CausalLM
from pdserve.runtime.parallel.sharding import SINGLE, Parallel

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    model: str = "builtin:tiny"  # a Hugging Face model directory or builtin:tiny|small
    device: str = "auto"
    dtype: str = "auto"
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: derived from memory
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.85
    cpu_kv_cache_bytes: int = 1 << 30
    tensor_parallel_size: int = 1  # processes (devices) one replica spans
    # A replica over several nodes (pods): tensor_parallel_size / num_nodes ranks on each,
    # all joining rank 0 at `rendezvous` (HOST:PORT); one node joins on loopback.
    num_nodes: int = 1
    rendezvous: str | None = None
    kv_compression: KVCompression = NO_COMPRESSION
    grammar_cache_bytes: int = 256 << 20  # compiled grammars kept for reuse (xgrammar's cache)

    def __post_init__(self) -> None:
        if isinstance(self.kv_compression, dict):  # from JSON (a tensor-parallel follower)
            self.kv_compression = KVCompression(**self.kv_compression)

    @property
    def devices_per_node(self) -> int:
        return self.tensor_parallel_size // self.num_nodes

    def validate(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens",
                     "tensor_parallel_size", "num_nodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be at least 1, got {self.num_kv_blocks}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be at least 2, got {self.max_model_len}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.tensor_parallel_size % self.num_nodes:
            raise ValueError(f"tensor_parallel_size {self.tensor_parallel_size} does not divide "
                             f"into {self.num_nodes} nodes")
        if self.num_nodes > 1 and not self.rendezvous:
            raise ValueError("a replica over several nodes needs a rendezvous HOST:PORT")
        self.kv_compression.validate()
        if self.kv_compression.enabled and self.tensor_parallel_size > 1:
            raise ValueError("KV compression is not supported with tensor_parallel_size > 1 yet"
                             " (its kept positions are chosen per KV head across all ranks)")


@dataclass
class EngineComponents:
    model_path: Path
    device: torch.device
    dtype: torch.dtype
    model_config: ModelConfig
    tokenizer: Tokenizer
    model: CausalLM
    kv_cache: KVCache  # this process's (a tensor-parallel rank's: its KV heads)
    kv_pool: KVPool  # the whole replica's KV, as the handoff moves it
    runner: ModelRunner | BucketedRunner
    max_model_len: int


def load_model(cfg: ModelConfig, path: Path, device: torch.device, dtype: torch.dtype,
               parallel: Parallel = SINGLE) -> CausalLM:
    """The weights (this rank's shard) read straight into parameters allocated in the target
    dtype on the target device: loading holds the weights once, plus one read buffer."""
    model = CausalLM.empty(cfg, device, dtype, parallel)
    model.load_weights(iter_weights(path))
    if device.type == "cpu":
        model.pack_linear_weights()
    return model


def _num_kv_blocks(config: EngineConfig, model: CausalLM, layout: KVLayout, max_len: int,
                   device: torch.device) -> int:
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    bytes_per_block = layout.bytes_per_block
    free = None
    if device.type == "xla":
        from pdserve.runtime.devices import xla

        free = xla.memory_bytes(device)
    if device.type == "cuda":
        budget = cuda_kv_budget(model, layout, config.max_num_batched_tokens,
                                config.gpu_memory_utilization, device)
    elif free is not None:
        budget = free[0] - (1 - config.gpu_memory_utilization) * free[1]
    else:
        needed = config.max_num_seqs * -(-max_len // config.block_size)
        budget = min(config.cpu_kv_cache_bytes, needed * bytes_per_block)
    blocks = int(budget // bytes_per_block)
    if blocks < 1:
        raise ValueError("not enough memory for a single KV block; lower the memory use")
    return blocks


def compiled_device(config: EngineConfig, device: torch.device,
                    max_len: int) -> CompiledDevice | None:
    """The bucketing of a device that compiles graphs (XLA), else None."""
    if device.type != "xla":
        return None
    from pdserve.runtime.devices import xla

    buckets = Buckets.for_engine(config.max_num_seqs, config.max_num_batched_tokens, max_len,
                                 config.block_size)
    return CompiledDevice(buckets, xla.sync, lambda: str(xla.compile_stats()))


def _warm_up(runner: BucketedRunner, kv_cache: KVCache) -> None:
    """Compile every step and transfer graph before serving."""
    started = time.perf_counter()
    runner.warm_up()
    for size in runner.buckets.blocks:  # the handoff's reads and writes (blocks still free)
        ids = list(range(min(size, kv_cache.num_blocks)))
        kv_cache.write_blocks(ids, kv_cache.read_blocks(ids))
    log.info("warm-up: %d step graphs and %d block-transfer sizes in %.1fs (%s)",
             runner.buckets.num_step_graphs, len(runner.buckets.blocks),
             time.perf_counter() - started, runner.compiled.describe_compiles())


def build_components(config: EngineConfig, parallel: Parallel = SINGLE) -> EngineComponents:
    """The torch parts of one engine, or of one tensor-parallel rank of it (`parallel`)."""
    config.validate()
    path = resolve_model_path(config.model)
    device = resolve_device(config.device, config.devices_per_node)
    if device.type == "cuda" and parallel.size > 1:
        device = torch.device("cuda", parallel.rank % config.devices_per_node)
        torch.cuda.set_device(device)
    dtype = resolve_dtype(config.dtype, device)
    if device.type == "cpu":
        keep_cpu_memory_mapped()
    model_config = load_model_config(path)
    max_len = config.max_model_len or model_config.max_position_embeddings
    if max_len > model_config.max_position_embeddings:
        raise ValueError(
            f"max_model_len {max_len} exceeds the model's max_position_embeddings "
            f"{model_config.max_position_embeddings}"
        )
    tokenizer = Tokenizer(path)
    model = load_model(model_config, path, device, dtype, parallel)
    layout = KVCache.layout_for(
        model_config.num_hidden_layers,
        model_config.num_key_value_heads // parallel.size,
        model_config.head_dim,
        config.block_size,
        dtype,
    )
    # Ranks share block ids, so they agree on the smallest pool any of them can hold.
    num_blocks = parallel.agree_min(_num_kv_blocks(config, model, layout, max_len, device))
    compiled = compiled_device(config, device, max_len)
    kv_cache = KVCache(layout, num_blocks, device, compiled)
    model.bind_kv_cache(kv_cache.layer_views())
    runner: ModelRunner | BucketedRunner
    if compiled is None:
        runner = ModelRunner(model, config.block_size, device)
    else:
        runner = BucketedRunner(model, config.block_size, device, compiled,
                                kv_cache.scratch_block)
        _warm_up(runner, kv_cache)
    return EngineComponents(path, device, dtype, model_config, tokenizer, model, kv_cache,
                            kv_cache, runner, max_len)  # fmt: skip
