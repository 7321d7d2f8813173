"""Per-replica performance models: roofline figures from /work/shared/FACTS.md, and a CPU model
calibrated on the measured CPU figures there.

prefill(batch) = overhead + linear FLOPs / (peak x MFU) + attention FLOPs (quadratic in length)
decode step    = overhead + (weights + KV bytes read) / (bandwidth x efficiency) + B x per-seq cost
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GB = 1e9
KIB = 1024


@dataclass(frozen=True)
class ModelShape:
    name: str
    non_embedding_params: float
    weight_bytes: float
    layers: int
    hidden: int
    kv_bytes_per_token: float


@dataclass(frozen=True)
class Accelerator:
    name: str
    peak_flops: float
    bandwidth: float
    memory: float


@dataclass(frozen=True)
class PerfModel:
    name: str
    accelerator: Accelerator
    model: ModelShape
    accelerators_per_replica: int = 1
    prefill_mfu: float = 0.45
    bandwidth_efficiency: float = 0.8
    prefill_overhead: float = 0.003
    decode_overhead: float = 0.002
    # Extra decode time per sequence in the batch (sampling, compute): matters on CPU.
    decode_per_sequence: float = 0.0
    max_batched_tokens: int = 8192
    max_num_seqs: int = 256
    kv_link_bandwidth: float = 50 * GB
    startup_seconds: float = 60.0
    memory_utilization: float = 0.9

    def prefill_seconds(self, new_tokens: int, attention_pairs: float) -> float:
        """`attention_pairs` = sum over prompts of (new tokens x context length)."""
        flops = 2.0 * self.model.non_embedding_params * new_tokens
        flops += 4.0 * self.model.layers * self.model.hidden * attention_pairs
        rate = self.accelerator.peak_flops * self.accelerators_per_replica * self.prefill_mfu
        return self.prefill_overhead + flops / rate

    def decode_step_seconds(self, batch: int, context_tokens: float) -> float:
        bytes_read = self.model.weight_bytes + self.model.kv_bytes_per_token * context_tokens
        bandwidth = self.accelerator.bandwidth * self.accelerators_per_replica
        return (self.decode_overhead + bytes_read / (bandwidth * self.bandwidth_efficiency)
                + self.decode_per_sequence * batch)

    def kv_capacity_tokens(self) -> int:
        memory = self.accelerator.memory * self.accelerators_per_replica
        free = memory * self.memory_utilization - self.model.weight_bytes
        return max(0, int(free / self.model.kv_bytes_per_token))

    def kv_transfer_seconds(self, tokens: int) -> float:
        return tokens * self.model.kv_bytes_per_token / self.kv_link_bandwidth

    def scaled(self, factor: float) -> PerfModel:
        """The same hardware running `factor` times faster (for capacity-error experiments)."""
        return replace(self, prefill_mfu=self.prefill_mfu * factor,
                       bandwidth_efficiency=self.bandwidth_efficiency * factor)


H100 = Accelerator("nvidia-h100", 989e12, 3.35e12, 80 * GB)
L4 = Accelerator("nvidia-l4", 121e12, 300 * GB, 24 * GB)
TPU_V5E = Accelerator("tpu-v5e", 197e12, 819 * GB, 16 * GB)
# FACTS.md: fp32 matmul ~200 GFLOP/s on the 2-core machines.
CPU_2CORE = Accelerator("cpu-2core", 200e9, 20 * GB, 24 * GB)

LLAMA_31_8B = ModelShape("Llama-3.1-8B", 6.98e9, 16.06 * GB, 32, 4096, 2 * 32 * 8 * 128 * 2)
LLAMA_32_1B = ModelShape("Llama-3.2-1B", 0.97e9, 2.47 * GB, 16, 2048, 32 * KIB)
# The 56M Llama-shaped model of FACTS.md's CPU measurements (fp32).
TINY_56M = ModelShape("llama-56M", 0.05e9, 0.224 * GB, 8, 512, 2 * 8 * 8 * 64 * 4)

# FACTS.md: `transformers` generate on the 56M model: 66 tok/s one at a time, 211 tok/s batched 16.
CPU_MEASURED_TOKENS_PER_SECOND = {1: 66.0, 16: 211.0}


def _cpu_calibrated() -> PerfModel:
    """Fit step(B) = a + b x B through the two measured points (context is short there)."""
    step1 = 1 / CPU_MEASURED_TOKENS_PER_SECOND[1]
    step16 = 16 / CPU_MEASURED_TOKENS_PER_SECOND[16]
    per_seq = (step16 - step1) / 15
    base = step1 - per_seq
    roofline = PerfModel("cpu", CPU_2CORE, TINY_56M, bandwidth_efficiency=1.0,
                         decode_overhead=0.0)
    weights_time = roofline.decode_step_seconds(0, 0)
    return PerfModel("cpu-tiny", CPU_2CORE, TINY_56M, prefill_mfu=0.25, bandwidth_efficiency=1.0,
                     decode_overhead=base - weights_time, decode_per_sequence=per_seq,
                     max_batched_tokens=2048, max_num_seqs=16, kv_link_bandwidth=4 * GB,
                     startup_seconds=10.0, prefill_overhead=0.01)


PROFILES: dict[str, PerfModel] = {
    "h100-llama8b": PerfModel("h100-llama8b", H100, LLAMA_31_8B),
    "l4-llama1b": PerfModel("l4-llama1b", L4, LLAMA_32_1B, prefill_mfu=0.4,
                            kv_link_bandwidth=12.5 * GB, startup_seconds=45.0),
    "tpu-v5e-llama8b": PerfModel("tpu-v5e-llama8b", TPU_V5E, LLAMA_31_8B,
                                 accelerators_per_replica=4, prefill_mfu=0.5,
                                 kv_link_bandwidth=25 * GB, startup_seconds=90.0),
    "cpu-tiny": _cpu_calibrated(),
}


def model_error_report() -> list[tuple[str, float, float, float]]:
    """(point, measured tok/s, predicted tok/s, relative error) for the CPU model, against the
    CPU figures of FACTS.md, both calibrated and from the plain roofline (no calibration)."""
    rows = []
    calibrated = PROFILES["cpu-tiny"]
    flops_per_token = 2 * TINY_56M.non_embedding_params
    roofline = PerfModel("cpu-roofline", CPU_2CORE, TINY_56M, bandwidth_efficiency=1.0,
                         decode_overhead=0.0,
                         decode_per_sequence=flops_per_token / CPU_2CORE.peak_flops)
    for batch, measured in CPU_MEASURED_TOKENS_PER_SECOND.items():
        for label, model in (("calibrated", calibrated), ("roofline", roofline)):
            predicted = batch / model.decode_step_seconds(batch, batch * 64)
            rows.append((f"{label} decode B={batch}", measured, predicted,
                         predicted / measured - 1))
    return rows
