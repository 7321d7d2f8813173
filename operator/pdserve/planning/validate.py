"""The plan's candidates checked in the discrete-event simulator (`planning/sim`), and the
ranking that follows: the cheapest candidate meeting the targets comes first, by the
simulator's attainment where it ran, by the model's elsewhere.

The simulator replays one seeded synthetic trace of the workload (`sim/workload_trace.py`)
through each checked candidate, its pods warm from the start and held at the candidate's
replicas (a fixed split: a plan sizes a fixed deployment for a steady rate, and with the
planner in the loop the run would judge the autoscaler's choices rather than the candidate).
Requests arriving in the first `WARMUP_SHARE` of the trace, while the empty pods fill, are not
counted. The simulator runs prefill pods and decode pods of any kinds and chip counts, and
serves every request first come, first served (no priority classes); it has no decode pods
that prefill, so aggregated candidates and P/D ones keeping short prompts on decode keep the
model's figures alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pdserve.planning.predict import Deployment
from pdserve.planning.search import Candidate, Targets
from pdserve.planning.sim.cluster import SimConfig, Simulation
from pdserve.planning.sim.observer import ObserverConfig
from pdserve.planning.sim.policies import StaticPolicy
from pdserve.planning.sim.report import slo_ratio
from pdserve.planning.sim.traces import Trace
from pdserve.planning.sim.workload_trace import workload_trace
from pdserve.planning.workload import Workload

# The cheapest candidates the simulator can express are checked, at least this many, and more
# (up to the most) while none of them meets the targets.
SIMULATED_AT_LEAST = 3
SIMULATED_AT_MOST = 6
# The trace: this many requests, within these seconds (a slow rate: fewer requests; a fast
# one: more, so the pods reach their steady state), and never more than the most requests
# (a plan stays within seconds: above 200 req/s the trace is shorter than a minute).
TRACE_REQUESTS = 4000
TRACE_SECONDS = (60.0, 1800.0)
MOST_TRACE_REQUESTS = 12000
WARMUP_SHARE = 0.2
# Time after the last arrival for the requests still in flight to finish.
DRAIN_SECONDS = 120.0


@dataclass(frozen=True)
class SimulatedTrace:
    seed: int
    requests: int
    seconds: float
    prefix_hit: float


@dataclass(frozen=True)
class Checked:
    candidate: Candidate
    # None: not simulated (beyond the simulator, or not among the cheapest checked).
    simulated_attainment: float | None

    def meets(self, targets: Targets) -> bool:
        return (self.simulated_attainment is None
                or self.simulated_attainment >= targets.attainment)


@dataclass(frozen=True)
class Validation:
    # Each cheapest first: the candidates meeting the targets (or not simulated), and those
    # whose simulated attainment misses them, which rank after every one of the first.
    meeting: list[Checked]
    missing: list[Checked]
    trace: SimulatedTrace


def expressible(candidate: Candidate) -> bool:
    """Whether the simulator can run the candidate: prefill pods hand every prompt to decode
    pods."""
    deployment = candidate.deployment
    return deployment.disaggregated and deployment.short_prompt_threshold == 0


def trace_for(workload: Workload, rate: float, seed: int) -> Trace:
    low, high = TRACE_SECONDS
    seconds = min(high, max(low, TRACE_REQUESTS / rate), MOST_TRACE_REQUESTS / rate)
    return workload_trace(workload, rate, seconds, seed)


def simulated_attainment(deployment: Deployment, trace: Trace, targets: Targets,
                         warmup_share: float = WARMUP_SHARE) -> float:
    """The share of the requests arriving after the warm-up that meet both targets, the
    deployment's pods warm and at its fixed split."""
    split = (deployment.prefill_replicas, deployment.decode_replicas)
    config = SimConfig(perf=deployment.decode, budget=deployment.chips,
                       ttft_target=targets.ttft_seconds, itl_target=targets.tpot_seconds,
                       pool_accelerators=deployment.chips, observer=ObserverConfig(noise=0.0),
                       tail=DRAIN_SECONDS, prefill_perf=deployment.prefill)
    run = trace.fresh()
    Simulation(run, config, StaticPolicy(*split), split, warm=True).run()
    counted = [r for r in run.requests
               if r.arrival >= warmup_share * run.duration] or run.requests
    met = sum(1 for r in counted
              if slo_ratio(r, targets.ttft_seconds, targets.tpot_seconds) <= 1.0)
    return met / len(counted)


def validate(found: Sequence[Candidate], workload: Workload, rate: float, targets: Targets,
             seed: int) -> Validation:
    """`found` cheapest first (the search's order), checked."""
    trace = trace_for(workload, rate, seed)
    checked: list[Checked] = []
    simulated = passed = 0
    for candidate in found:
        wanted = simulated < SIMULATED_AT_LEAST or (not passed
                                                     and simulated < SIMULATED_AT_MOST)
        if not (wanted and expressible(candidate)):
            checked.append(Checked(candidate, None))
            continue
        attainment = simulated_attainment(candidate.deployment, trace, targets)
        simulated += 1
        passed += attainment >= targets.attainment
        checked.append(Checked(candidate, attainment))
    return Validation([c for c in checked if c.meets(targets)],
                      [c for c in checked if not c.meets(targets)],
                      SimulatedTrace(seed, len(trace.requests), trace.duration,
                                     trace.prefix_hit()))
