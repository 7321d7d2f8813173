"""The experiments: hardware profiles with their targets and budgets, the traces, and the
planner settings (chosen on the tuning traces, then frozen for the evaluation traces)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.sim.perf import PROFILES
from pdserve.autoscaler import CapacityPrior, PlannerConfig, RoleBounds
from pdserve.planning.perf import ReplicaPerf
from pdserve.planning.sim.traces import (
    Trace,
    build_trace,
    build_uniform_trace,
    mix_curve,
    piecewise,
)

# Chosen with `python bench/simulate.py --tune` on the tuning traces, then frozen.
FROZEN_SETTINGS = {
    "latency_aim": 0.6,
    "interval_seconds": 30.0,
    "target_utilization": 0.65,
    "peak_utilization": 0.7,
    "dead_band": 0.1,
    "scale_down_stabilization_seconds": 120.0,
    "max_step": 3,
    "hold_seconds": 180.0,
    "max_burst_factor": 2.0,
}
# Context length assumed when turning the ITL target into a decode capacity prior.
PRIOR_CONTEXT_TOKENS = 1500


@dataclass(frozen=True)
class Deployment:
    perf: ReplicaPerf
    budget: int
    ttft_target: float
    itl_target: float
    # Work units (requests or agentic sessions) per second at load 1.0.
    rate: float
    duration: float = 1800.0

    @property
    def name(self) -> str:
        return self.perf.name


DEPLOYMENTS = {
    "h100-llama8b": Deployment(PROFILES["h100-llama8b"], 12, 1.0, 0.030, rate=60.0),
    "l4-llama1b": Deployment(PROFILES["l4-llama1b"], 12, 1.0, 0.030, rate=22.0),
    # Llama-3.1-8B needs a 2x2 v5e slice per pod (16 GB per chip): 4 chips per replica.
    "tpu-v5e-llama8b": Deployment(PROFILES["tpu-v5e-llama8b"], 48, 1.0, 0.030, rate=55.0),
    "cpu-tiny": Deployment(PROFILES["cpu-tiny"], 8, 20.0, 0.25, rate=0.8, duration=3600.0),
    # NVIDIA Dynamo issue #10528's load on one H100 a replica: 1 <-> 24 req/s, 8,000-token
    # prompts, 1,000-token answers, TTFT 3 s / ITL 35 ms; 32 GPUs hold its peak.
    "h100-llama8b-10528": Deployment(PROFILES["h100-llama8b"], 32, 3.0, 0.035, rate=24.0),
}


def capacity_prior(perf: ReplicaPerf, ttft_target: float, itl_target: float) -> CapacityPrior:
    """Per-replica capacity from the performance model: full prefill batches, and the largest
    decode batch whose step stays within 85% of the inter-token target."""
    tokens = perf.max_batched_tokens
    prefill = tokens / perf.prefill_seconds(tokens, tokens * 1000)
    batch = 1
    kv_limit = perf.kv_capacity_tokens() // PRIOR_CONTEXT_TOKENS
    while (batch < min(perf.max_num_seqs, kv_limit)
           and perf.decode_step_seconds(batch + 1, (batch + 1) * PRIOR_CONTEXT_TOKENS)
           <= 0.85 * itl_target):
        batch += 1
    step = perf.decode_step_seconds(batch, batch * PRIOR_CONTEXT_TOKENS)
    return CapacityPrior(prefill, batch / step, float(batch))


def planner_config(dep: Deployment, capacity_error: float = 1.0,
                   settings: dict[str, float] | None = None) -> PlannerConfig:
    """`capacity_error` scales the priors (0.7 / 1.3 = the model is 30% off)."""
    prior = capacity_prior(dep.perf, dep.ttft_target, dep.itl_target)
    prior = CapacityPrior(prior.prefill_tokens_per_second * capacity_error,
                          prior.decode_tokens_per_second * capacity_error,
                          prior.decode_max_sequences * capacity_error)
    values = dict(FROZEN_SETTINGS if settings is None else settings)
    a = dep.perf.accelerators_per_replica
    return PlannerConfig(
        ttft_target_seconds=dep.ttft_target, itl_target_seconds=dep.itl_target,
        prefill=RoleBounds(1, dep.budget // a - 1, a), decode=RoleBounds(1, dep.budget // a - 1, a),
        capacity=prior, accelerator_budget=dep.budget,
        interval_seconds=values["interval_seconds"],
        target_utilization=values["target_utilization"], dead_band=values["dead_band"],
        scale_down_stabilization_seconds=values["scale_down_stabilization_seconds"],
        max_step=int(values["max_step"]), hold_seconds=values["hold_seconds"],
        latency_aim=values["latency_aim"], peak_utilization=values["peak_utilization"],
        max_burst_factor=values["max_burst_factor"], backlog_drain_seconds=30.0)


SUMMARIES = (0.85, 0.1, 0.05)
STORIES = (0.1, 0.85, 0.05)
AGENTIC = (0.15, 0.15, 0.7)
MIXED = (0.4, 0.4, 0.2)


def shifting(dep: Deployment, seed: int, bursty: bool = False) -> Trace:
    """The evaluation trace: the mix moves summaries -> stories -> agentic while the load rises
    to a peak and falls back (a day compressed into half an hour)."""
    d = dep.duration
    rate = piecewise([(0, 0.35), (0.15 * d, 0.7), (0.3 * d, 0.7), (0.5 * d, 1.0),
                      (0.7 * d, 1.0), (0.85 * d, 0.5), (d, 0.3)])
    mix = mix_curve([(0, SUMMARIES), (0.3 * d, SUMMARIES), (0.45 * d, STORIES),
                     (0.7 * d, STORIES), (0.85 * d, AGENTIC), (d, AGENTIC)])
    name = "shifting-bursty" if bursty else "shifting"
    return build_trace(name, d, lambda t: dep.rate * rate(t), mix, seed, bursty)


def dynamo_10528(dep: Deployment, seed: int) -> Trace:
    """NVIDIA Dynamo issue #10528: a sinusoidal load between 1 and 24 req/s (period 900 s, from
    1 req/s), 8,000-token prompts and 1,000-token outputs, as its load generator sends them."""
    low, high, period = 1.0 / 24.0, 1.0, 900.0

    def rate(t: float) -> float:
        return dep.rate * (low + (high - low) * (1 - math.cos(2 * math.pi * t / period)) / 2)

    return build_uniform_trace("dynamo-10528", dep.duration, rate, 8000, 1000, seed)


def load_step(dep: Deployment, seed: int) -> Trace:
    """A stable mixed load that doubles at one third of the run (recovery time is measured)."""
    d = dep.duration
    step = d / 3
    return build_trace("step", d, lambda t: dep.rate * (0.4 if t < step else 0.8),
                       lambda t: MIXED, seed, marks=((step, "step"),))


def tuning_traces(dep: Deployment, seed: int = 0) -> list[Trace]:
    """Traces the settings were chosen on: other seeds and shapes than the evaluation."""
    d = dep.duration
    ramp = piecewise([(0, 0.3), (0.5 * d, 0.9), (d, 0.4)])
    swap = mix_curve([(0, STORIES), (0.5 * d, STORIES), (0.6 * d, SUMMARIES), (d, SUMMARIES)])
    return [
        build_trace("tune-ramp-mixed", d, lambda t: dep.rate * ramp(t), lambda t: MIXED,
                    101 + 2 * seed),
        build_trace("tune-swap-bursty", d, lambda t: dep.rate * 0.6, swap, 102 + 2 * seed,
                    bursty=True),
    ]
