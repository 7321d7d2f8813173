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
    # Matmul FLOP/s reached, as a share of peak (prefill, and decode where compute binds).
    prefill_mfu: float
    # Weight and KV bytes read per second in a decode step, as a share of the bandwidth.
    bandwidth_efficiency: float
    prefill_overhead_seconds: float
    decode_overhead_seconds: float
    # Host work per sequence of a decode step (sampling, detokenizing): matters on CPU.
    decode_per_sequence_seconds: float
    # Work per prompt token outside the matmuls (norms, rotary, the KV write): CPU only.
    prefill_per_token_seconds: float
    # Whether a decode step's matmuls overlap its memory reads (the roofline's max) or add
    # to them (a CPU runs one after the other).
    overlap: bool


CALIBRATION: dict[str, Calibration] = {
    "gpu": Calibration(0.45, 0.8, 0.003, 0.002, 0.0, 0.0, True),
    "tpu": Calibration(0.5, 0.8, 0.003, 0.002, 0.0, 0.0, True),
    "cpu": Calibration(0.68, 1.0, 0.0005, 0.0005, 0.000016, 0.00001, False),
}
