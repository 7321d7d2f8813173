"""A seeded synthetic trace of a `pdserve plan` workload, for the simulator: its prompt and
answer lengths (drawn from the workload's distributions), its rate, its arrival pattern and
its prefix-cache hits.

Arrivals are a renewal process whose inter-arrival times have the workload's squared
coefficient of variation (the c_a^2 the model's queues assume): exponential for Poisson, a
balanced two-phase hyperexponential for bursty arrivals. Prefix hits come from sessions: a hit
fraction h turns the requests into interleaved sessions of `TURNS` turns whose prompts grow
turn by turn and repeat the previous turn's tokens, so a prefill pod that served the previous
turn finds about h of the prompt tokens in its cache (the first turns find none: the later
ones repeat more to keep the mean).
"""

from __future__ import annotations

import math
import random

from pdserve.planning.sim.traces import Request, Trace
from pdserve.planning.workload import Lengths, Workload

TURNS = 6
# Seconds between two turns of a session: the active sessions are rate x this.
TURN_GAP_SECONDS = 5.0


def _gaps(rng: random.Random, rate: float, scv: float, count: int) -> list[float]:
    if scv <= 1.0:
        return [rng.expovariate(rate) for _ in range(count)]
    # Two exponential phases chosen with probabilities p and 1-p, each carrying half the mean.
    p = (1 + math.sqrt((scv - 1) / (scv + 1))) / 2
    fast, slow = 2 * p * rate, 2 * (1 - p) * rate
    return [rng.expovariate(fast if rng.random() < p else slow) for _ in range(count)]


def _draw(rng: random.Random, lengths: Lengths, count: int) -> list[int]:
    values = [max(1, round(v)) for v, _ in lengths.points]
    weights = [w for _, w in lengths.points]
    return rng.choices(values, weights=weights, k=count)


def _sessions(requests: list[Request], hit: float, active: int) -> None:
    """Group the requests (in arrival order) into sessions of `TURNS` turns, `active` sessions
    interleaved at a time, and set each later turn's repeated prefix."""
    sessions: dict[int, list[Request]] = {}
    block = active * TURNS
    for index, request in enumerate(requests):
        request.session = index // block * active + index % active
        sessions.setdefault(request.session, []).append(request)
    later_tokens = sum(r.prompt for turns in sessions.values() for r in turns[1:])
    repeat = min(1.0, hit * sum(r.prompt for r in requests) / max(later_tokens, 1))
    for turns in sessions.values():
        prompts = sorted(r.prompt for r in turns)
        for turn, (request, prompt) in enumerate(zip(turns, prompts, strict=True)):
            request.prompt = prompt
            if turn:
                request.shared_prefix = min(prompts[turn - 1], round(repeat * prompt))


def workload_trace(workload: Workload, rate: float, seconds: float, seed: int) -> Trace:
    """About `rate` x `seconds` requests of `workload`, the same for the same seed."""
    rng = random.Random(seed)
    count = max(1, round(rate * seconds))
    arrivals = []
    t = 0.0
    for gap in _gaps(rng, rate, workload.arrival_scv, count):
        t += gap
        arrivals.append(t)
    prompts = _draw(rng, workload.input_tokens, count)
    outputs = _draw(rng, workload.output_tokens, count)
    requests = [Request(i, arrival, prompt, output, workload.name)
                for i, (arrival, prompt, output) in enumerate(zip(arrivals, prompts, outputs,
                                                                   strict=True))]
    if workload.prefix_hit > 0:
        _sessions(requests, workload.prefix_hit, max(1, round(rate * TURN_GAP_SECONDS)))
    return Trace(workload.name, max(seconds, t), requests)
