"""Request traces: open-loop arrivals fixed before the run, whatever the serving does.

Kinds: summarization (long prompt, short answer), story (short prompt, long answer), agentic
(multi-turn sessions whose context grows turn by turn). A trace is a load curve (requests/s over
time), a mix curve (kind weights over time) and an arrival process (Poisson or bursty)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

KINDS = ("summarization", "story", "agentic")
AGENTIC_MEAN_TURNS = 5.5
BURST, CALM = 2.0, 0.75


@dataclass(slots=True)
class Request:
    id: int
    arrival: float
    prompt: int
    output: int
    kind: str
    session: int = -1
    # Tokens of the prompt that repeat the session's previous turn (reusable from a prefix cache).
    shared_prefix: int = 0
    first_token: float = math.nan
    finish: float = math.nan
    aborted: bool = False


@dataclass(frozen=True)
class Trace:
    name: str
    duration: float
    requests: list[Request] = field(repr=False)
    # (time, label) marks, e.g. the instant of a load step.
    marks: tuple[tuple[float, str], ...] = ()

    def fresh(self) -> Trace:
        """A copy with no results recorded, for another run."""
        return replace(self, requests=[replace(r) for r in self.requests])

    def prefix_hit(self) -> float:
        """The share of the prompt tokens that repeat their session's previous turn."""
        total = sum(r.prompt for r in self.requests)
        return sum(r.shared_prefix for r in self.requests) / total if total else 0.0


def _lognormal(rng: random.Random, mean: float, sigma: float, low: int, high: int) -> int:
    mu = math.log(mean) - sigma * sigma / 2
    return max(low, min(high, round(rng.lognormvariate(mu, sigma))))


def _arrival_times(rng: random.Random, rate: Callable[[float], float], duration: float,
                   bursty: bool) -> list[float]:
    """Non-homogeneous Poisson by thinning; bursty = a two-state modulated process whose bursts
    double the rate for ~20 s and whose calm spells (~80 s) run at 0.75x (same mean)."""
    peak = max(rate(t) for t in _grid(duration)) * (BURST if bursty else 1.0) * 1.05
    times: list[float] = []
    t, burst_until, calm_until = 0.0, -1.0, 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            return times
        factor = 1.0
        if bursty:
            if t >= burst_until and t >= calm_until:
                burst_until = t + rng.expovariate(1 / 20.0)
                calm_until = burst_until + rng.expovariate(1 / 80.0)
            factor = BURST if t < burst_until else CALM
        if rng.random() * peak < rate(t) * factor:
            times.append(t)


def build_uniform_trace(name: str, duration: float, rate: Callable[[float], float],
                        prompt: int, output: int, seed: int) -> Trace:
    """One request shape (a load generator's fixed input and output lengths) under a Poisson
    arrival rate `rate(t)`."""
    rng = random.Random(seed)
    requests = [Request(i, t, prompt, output, "uniform")
                for i, t in enumerate(_arrival_times(rng, rate, duration, bursty=False))]
    return Trace(name, duration, requests)


def _grid(duration: float) -> list[float]:
    return [duration * i / 200 for i in range(201)]


def build_trace(name: str, duration: float, rate: Callable[[float], float],
                mix: Callable[[float], tuple[float, float, float]], seed: int,
                bursty: bool = False, marks: tuple[tuple[float, str], ...] = ()) -> Trace:
    """`rate(t)` is the request arrival rate; `mix(t)` weights summarization, story and agentic
    (shares of requests)."""
    rng = random.Random(seed)
    requests: list[Request] = []
    session = 0
    for t in _arrival_times(rng, rate, duration, bursty):
        kind = rng.choices(KINDS, weights=mix(t))[0]
        if kind == "summarization":
            requests.append(Request(0, t, _lognormal(rng, 3000, 0.5, 500, 8000),
                                    _lognormal(rng, 120, 0.5, 16, 400), kind))
        elif kind == "story":
            requests.append(Request(0, t, _lognormal(rng, 250, 0.5, 32, 1000),
                                    _lognormal(rng, 700, 0.4, 150, 2000), kind))
        elif rng.random() < 1.0 / AGENTIC_MEAN_TURNS:
            # Weights are shares of requests: a session brings several, so start fewer.
            session += 1
            requests.extend(_agentic_session(rng, t, session, duration))
    requests.sort(key=lambda r: r.arrival)
    for index, request in enumerate(requests):
        request.id = index
    return Trace(name, duration, requests, marks)


def _agentic_session(rng: random.Random, start: float, session: int,
                     duration: float) -> list[Request]:
    """Turns follow a nominal schedule fixed up front (open loop): each turn resends the whole
    context plus a tool result, answers briefly, and the next turn comes after a think time."""
    turns = rng.randint(3, 8)
    context = _lognormal(rng, 1500, 0.4, 300, 4000)
    t = start
    out: list[Request] = []
    for _ in range(turns):
        if t >= duration:
            break
        answer = _lognormal(rng, 150, 0.5, 16, 600)
        previous = out[-1].prompt + out[-1].output if out else 0
        out.append(Request(0, t, context, answer, "agentic", session, previous))
        context += answer + _lognormal(rng, 300, 0.6, 20, 2000)
        t += 3.0 + answer * 0.03 + rng.expovariate(1 / 4.0)
    return out


def piecewise(points: list[tuple[float, float]]) -> Callable[[float], float]:
    """Linear interpolation through (time, value) points, flat outside them."""
    def value(t: float) -> float:
        if t <= points[0][0]:
            return points[0][1]
        for (t0, v0), (t1, v1) in itertools.pairwise(points):
            if t <= t1:
                return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
        return points[-1][1]
    return value


def mix_curve(points: list[tuple[float, tuple[float, float, float]]]
              ) -> Callable[[float], tuple[float, float, float]]:
    curves = [piecewise([(t, w[i]) for t, w in points]) for i in range(3)]
    return lambda t: (curves[0](t), curves[1](t), curves[2](t))
