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
    prefill_mfu: float
    bandwidth_efficiency: float
    prefill_overhead_seconds: float
    decode_overhead_seconds: float
    # Host work per sequence of a decode step (sampling, detokenizing): matters on CPU.
    decode_per_sequence_seconds: float


CALIBRATION: dict[str, Calibration] = {
    "gpu": Calibration(0.45, 0.8, 0.003, 0.002, 0.0),
    "tpu": Calibration(0.5, 0.8, 0.003, 0.002, 0.0),
    "cpu": Calibration(0.5, 0.6, 0.01, 0.01, 0.001),
}
