"""Runs of (deployment, trace, policy), in parallel processes, each from a fresh trace copy."""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass

from bench.sim.scenarios import (
    DEPLOYMENTS,
    Deployment,
    capacity_prior,
    dynamo_10528,
    load_step,
    planner_config,
    shifting,
)
from pdserve.planning.sim.cluster import SimConfig, Simulation
from pdserve.planning.sim.policies import (
    HpaPolicy,
    PlannerPolicy,
    ProportionalClampPolicy,
    StaticPolicy,
)
from pdserve.planning.sim.report import RunReport, report
from pdserve.planning.sim.traces import Trace

# The node pool is shared and larger than the budget: the budget is the service's policy.
POOL_FACTOR = 1.5
# HPA targets (in-flight requests per pod), chosen on the tuning traces like the planner's.
HPA_TARGETS = {"prefill": 2.0, "decode_fraction_of_max_sequences": 0.8}


@dataclass(frozen=True)
class RunSpec:
    deployment: str
    trace: str  # shifting | shifting-bursty | step | tune-*
    seed: int
    policy: str  # planner | hpa | clamp | static:P
    capacity_error: float = 1.0
    cold: bool = False
    settings: tuple[tuple[str, float], ...] | None = None
    keep_timeline: bool = False

    @property
    def label(self) -> str:
        name = self.policy.replace("static:", "static ")
        if self.policy == "clamp":
            name = "dynamo-style clamp"
        if self.policy == "planner":
            if self.capacity_error != 1.0:
                name += f" (capacity model x{self.capacity_error:.1f})"
            if self.cold:
                name += " (cold start)"
        return name


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    report: RunReport
    timeline: list[tuple[float, int, int, int, int]]


@functools.lru_cache(maxsize=8)
def trace_for(deployment: str, name: str, seed: int) -> Trace:
    from bench.sim.scenarios import tuning_traces

    dep = DEPLOYMENTS[deployment]
    if name == "shifting":
        return shifting(dep, seed)
    if name == "shifting-bursty":
        return shifting(dep, seed, bursty=True)
    if name == "step":
        return load_step(dep, seed)
    if name == "dynamo-10528":
        return dynamo_10528(dep, seed)
    return next(t for t in tuning_traces(dep, seed) if t.name == name)


def sim_config(dep: Deployment, seed: int) -> SimConfig:
    return SimConfig(dep.perf, dep.budget, dep.ttft_target, dep.itl_target,
                     pool_accelerators=int(dep.budget * POOL_FACTOR), seed=seed)


def hpa_policy(dep: Deployment) -> HpaPolicy:
    prior = capacity_prior(dep.perf, dep.ttft_target, dep.itl_target)
    high = dep.budget // dep.perf.accelerators_per_replica - 1
    return HpaPolicy(HPA_TARGETS["prefill"],
                     prior.decode_max_sequences * HPA_TARGETS["decode_fraction_of_max_sequences"],
                     dep.budget, ((1, high), (1, high)), dep.perf.accelerators_per_replica)


def clamp_policy(dep: Deployment) -> ProportionalClampPolicy:
    """The Dynamo-style baseline, its profiled throughput from the same performance model."""
    perf = dep.perf
    prior = capacity_prior(perf, dep.ttft_target, dep.itl_target)

    def decode_rate(context: float) -> float:
        """Best generated tokens/s of one replica with the step within the ITL target."""
        best, batch = 0.0, 1
        fit = perf.kv_capacity_tokens() / max(context, 1.0)
        while batch <= min(perf.max_num_seqs, max(1.0, fit)):
            step = perf.decode_step_seconds(batch, batch * context)
            if step > dep.itl_target:
                break
            best = batch / step
            batch += 1
        return best or 1.0 / perf.decode_step_seconds(1, context)

    a = perf.accelerators_per_replica
    return ProportionalClampPolicy(prior.prefill_tokens_per_second, decode_rate, dep.budget,
                                   dep.budget // a - 1, a)


def run(spec: RunSpec) -> RunResult:
    dep = DEPLOYMENTS[spec.deployment]
    trace = trace_for(spec.deployment, spec.trace, spec.seed).fresh()
    replicas = dep.budget // dep.perf.accelerators_per_replica
    half = (replicas // 2, replicas - replicas // 2)
    nan_actions = 0
    if spec.policy.startswith("static:"):
        prefill = int(spec.policy.split(":")[1])
        policy: StaticPolicy | PlannerPolicy | HpaPolicy | ProportionalClampPolicy = (
            StaticPolicy(prefill, replicas - prefill))
        initial, warm = (prefill, replicas - prefill), True
    elif spec.policy == "hpa":
        policy, initial, warm = hpa_policy(dep), half, True
    elif spec.policy == "clamp":
        policy, initial, warm = clamp_policy(dep), half, True
    else:
        settings = dict(spec.settings) if spec.settings else None
        policy = PlannerPolicy(planner_config(dep, spec.capacity_error, settings))
        initial, warm = ((1, 1), False) if spec.cold else (half, True)
    sim = Simulation(trace, sim_config(dep, spec.seed), policy, initial, warm).run()
    if isinstance(policy, PlannerPolicy):
        nan_actions = policy.actions_on_nan
    result = report(sim, spec.label, nan_actions)
    return RunResult(spec, result, sim.timeline if spec.keep_timeline else [])


def run_all(specs: Sequence[RunSpec], processes: int = 2) -> list[RunResult]:
    if processes <= 1:
        return [run(s) for s in specs]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return pool.map(run, specs, chunksize=1)


def statics(dep: Deployment) -> list[str]:
    replicas = dep.budget // dep.perf.accelerators_per_replica
    return [f"static:{p}" for p in range(1, replicas)]
