"""How far below the roofline each accelerator family runs: the one table of calibration.

GPU and TPU rows are the figures serving engines publish on dense models (prefill at 45-50% of
peak FLOP/s, decode reading weights and KV at ~80% of the memory bandwidth, a few ms of host
work a step). The CPU row is fitted to pdserve's own runtime on the project's 2-core machines
(`python -m bench.bench_plan_calibration`, results in bench/results/plan.md): the benchmark
prints the model against the measured figures with the error.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Calibration:
    # Matmul FLOP/s reached in prefill (large matrices), as a share of peak.
    prefill_mfu: float
    # Matmul FLOP/s reached in a decode step (a row per sequence), as a share of peak.
    decode_mfu: float
    # Weight and KV bytes read per second in a decode step, as a share of the bandwidth.
    bandwidth_efficiency: float
    prefill_overhead_seconds: float
    decode_overhead_seconds: float
    # Host work per sequence of a decode step (sampling, detokenizing): matters on CPU.
    decode_per_sequence_seconds: float
    # Work per prompt token outside the matmuls (norms, rotary, the KV write): CPU only.
    prefill_per_token_seconds: float


CALIBRATION: dict[str, Calibration] = {
    "gpu": Calibration(0.45, 0.45, 0.8, 0.003, 0.002, 0.0, 0.0),
    "tpu": Calibration(0.5, 0.5, 0.8, 0.003, 0.002, 0.0, 0.0),
    "cpu": Calibration(0.86, 0.54, 0.96, 0.00077, 0.00043, 0.000018, 0.0000048),
}
