"""The performance model of one replica (one pod of `chips` chips, tensor parallel): roofline
times with calibrated efficiencies. `pdserve plan`, the planner's capacity priors and the
simulator (`planning/sim`) all use this one model. Its figures (the accelerator table, the
calibration table, the KV transport's measured speed) live in `api/accelerators.py`, with
their sources; the constants below are the model's own assumptions.

prefill(tokens)  = overhead + (linear + attention FLOPs) / (chips x peak x MFU)
                   + tokens x per-token cost + all-reduces
decode step(B)   = overhead + max(memory: (weights + KV read) / (chips x bandwidth x
                   efficiency), compute: B tokens' FLOPs / (chips x peak x decode MFU))
                   + B x per-sequence cost + all-reduces
all-reduce       = 2 per layer over the hidden states, ring over the chips' link
"""

from __future__ import annotations

from dataclasses import dataclass

from pdserve.api.accelerators import CALIBRATION, KV_TRANSPORT_BYTES_PER_S, Calibration
from pdserve.planning.catalog import Accelerator
from pdserve.planning.shapes import ModelShape

# Fraction of a pod's memory the runtime gives weights plus KV (the rest: activations, CUDA
# graphs, fragmentation), as vLLM's gpu_memory_utilization default.
MEMORY_UTILIZATION = 0.9
ALL_REDUCE_LATENCY_SECONDS = 10e-6
ACTIVATION_BYTES = 2  # all-reduces move bf16 hidden states whatever the weights' dtype


def compute_dtype(accelerator: Accelerator, dtype: str) -> str:
    """The dtype the runtime computes in: float32 on CPU pools (its `auto`), else `dtype`."""
    return "float32" if accelerator.family == "cpu" else dtype


@dataclass(frozen=True)
class ReplicaPerf:
    name: str
    shape: ModelShape
    dtype: str
    chips: int
    peak_flops: float  # one chip, for the dtype
    bandwidth: float  # one chip
    memory: float  # one chip
    link: float  # chip to chip; unused at chips == 1
    calibration: Calibration
    max_batched_tokens: int = 8192
    max_num_seqs: int = 256
    kv_link_bandwidth: float = KV_TRANSPORT_BYTES_PER_S
    startup_seconds: float = 60.0

    @property
    def accelerators_per_replica(self) -> int:
        return self.chips

    @property
    def weight_bytes(self) -> float:
        return self.shape.weight_bytes(self.dtype)

    @property
    def kv_bytes_per_token(self) -> float:
        return self.shape.kv_bytes_per_token(self.dtype)

    def all_reduce_seconds(self, tokens: float) -> float:
        if self.chips == 1:
            return 0.0
        ring = (2 * (self.chips - 1) / self.chips * tokens * self.shape.hidden
                * ACTIVATION_BYTES / self.link)
        return 2 * self.shape.layers * (ALL_REDUCE_LATENCY_SECONDS + ring)

    def prefill_seconds(self, new_tokens: float, attention_pairs: float) -> float:
        """`attention_pairs` = sum over prompts of (new tokens x their context length)."""
        c = self.calibration
        flops = (self.shape.linear_flops_per_token() * new_tokens
                 + self.shape.attention_flops_per_pair() * attention_pairs)
        return (c.prefill_overhead_seconds + flops / self._flop_rate(c.prefill_mfu)
                + c.prefill_per_token_seconds * new_tokens + self.all_reduce_seconds(new_tokens))

    def decode_step_seconds(self, batch: float, context_tokens: float) -> float:
        """One step of `batch` sequences reading `context_tokens` tokens of KV in all."""
        c = self.calibration
        read = self.weight_bytes + self.kv_bytes_per_token * context_tokens
        memory = read / (self.bandwidth * self.chips * c.bandwidth_efficiency)
        flops = (self.shape.decode_flops_per_token() * batch
                 + self.shape.attention_flops_per_pair() * context_tokens)
        compute = flops / self._flop_rate(c.decode_mfu)
        return (c.decode_overhead_seconds + max(memory, compute)
                + c.decode_per_sequence_seconds * batch
                + self.all_reduce_seconds(batch))

    def _flop_rate(self, mfu: float) -> float:
        return self.peak_flops * self.chips * mfu

    def kv_capacity_tokens(self) -> int:
        free = self.memory * self.chips * MEMORY_UTILIZATION - self.weight_bytes
        return max(0, int(free / self.kv_bytes_per_token))

    def kv_transfer_seconds(self, tokens: float) -> float:
        return tokens * self.kv_bytes_per_token / self.kv_link_bandwidth


def replica_perf(accelerator: Accelerator, shape: ModelShape, dtype: str,
                 chips: int, nodes: int = 1) -> ReplicaPerf:
    """The model of a replica of `chips` chips of `accelerator` (over `nodes` nodes: its ring
    all-reduces cross the slower network) serving `shape` in `dtype` (engine limits at their
    defaults: `dataclasses.replace` sets others); ValueError when the kind has no matmul units
    for the dtype."""
    dtype = compute_dtype(accelerator, dtype)
    flops = accelerator.flops(dtype) if dtype != "float32" else accelerator.bf16_tflops * 1e12
    if flops is None:
        raise ValueError(f"{accelerator.kind} has no {dtype} matmul units")
    return ReplicaPerf(
        name=f"{accelerator.kind}x{chips}", shape=shape, dtype=dtype, chips=chips,
        peak_flops=flops, bandwidth=accelerator.bandwidth, memory=accelerator.memory,
        link=accelerator.link if nodes == 1 else min(accelerator.link, accelerator.network),
        calibration=CALIBRATION[accelerator.family],
        # Each rank sends its shard of the KV over its own share of the network.
        kv_link_bandwidth=min(KV_TRANSPORT_BYTES_PER_S, accelerator.network * chips))
