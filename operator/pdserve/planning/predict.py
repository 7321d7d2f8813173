"""Predicted latency and goodput of one deployment at one arrival rate: queueing on top of the
replica performance model.

Prefill is a multi-server queue per pool (M/G/c: Erlang C, Allen-Cunneen for the arrival and
service variability, an exponential tail, non-preemptive priority classes). Decode is a
continuous batch per replica whose size B follows from Little's law, B = a x step(B) with
step(B) = s0 + s1 x B, so B = a s0 / (1 - a s1); its spread is Poisson-like (variance B times
the arrivals' c_a^2). An aggregated replica mixes prefill chunks into its decode steps: decode
steps stretch by the prefill share of time, and prefill runs in the time steps leave it.
A request meets its targets when its TTFT and its TPOT both do (taken as independent).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

from pdserve.planning.perf import ReplicaPerf
from pdserve.planning.workload import Workload

_NORMAL = NormalDist()
Z90 = _NORMAL.inv_cdf(0.9)


@dataclass(frozen=True)
class Deployment:
    """prefill None: aggregated (the decode pool prefills too)."""

    prefill: ReplicaPerf | None
    prefill_replicas: int
    decode: ReplicaPerf
    decode_replicas: int
    # Disaggregated only: prompts shorter than this prefill on their decode replica.
    short_prompt_threshold: int = 0

    @property
    def disaggregated(self) -> bool:
        return self.prefill is not None

    @property
    def chips(self) -> int:
        prefill = self.prefill.chips * self.prefill_replicas if self.prefill else 0
        return prefill + self.decode.chips * self.decode_replicas


@dataclass(frozen=True)
class Prediction:
    feasible: bool
    attainment: float
    ttft_p50: float
    ttft_p90: float
    tpot_p50: float
    tpot_p90: float
    # Each resource's use in [0, 1+) at this rate: the largest is what binds.
    usage: dict[str, float]

    @property
    def binding(self) -> str:
        return max(self.usage, key=lambda k: self.usage[k])


INFEASIBLE_USAGE = 9.99


@dataclass(frozen=True)
class _Prompt:
    """One point of the input-length distribution (TTFT does not depend on the output)."""

    weight: float
    tokens: float
    uncached: float


def _prompts(workload: Workload) -> list[_Prompt]:
    return [_Prompt(weight, tokens, max(1.0, tokens * (1 - workload.prefix_hit)))
            for tokens, weight in workload.input_tokens.points]


def _erlang_c(servers: int, offered: float) -> float:
    """Probability an arrival waits in M/M/c with `offered` = lambda x E[S] (< servers), from
    Erlang B's recursion (no factorials: stable for any pool size)."""
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered * blocking / (k + offered * blocking)
    rho = offered / servers
    return blocking / (1 - rho * (1 - blocking))


@dataclass(frozen=True)
class _Queue:
    """Waiting time of a priority class: P(W > t) = p_wait x exp(-t / scale)."""

    p_wait: float
    scales: tuple[float, ...]  # per priority class, highest first

    def cdf(self, klass: int, t: float) -> float:
        if t < 0:
            return 0.0
        return 1.0 - self.p_wait * math.exp(-t / self.scales[klass])


def _queue(rate: float, services: list[tuple[float, float]], servers: int,
           workload: Workload) -> _Queue | None:
    """`services`: (weight, seconds); None when the pool cannot keep up."""
    mean = sum(w * s for w, s in services)
    offered = rate * mean
    if offered >= servers:
        return None
    if offered <= 0:
        return _Queue(0.0, tuple(1.0 for _ in workload.priorities))
    second = sum(w * s * s for w, s in services)
    cs2 = second / (mean * mean) - 1
    p_wait = _erlang_c(servers, offered)
    rho = offered / servers
    fcfs = p_wait * mean / (servers * (1 - rho)) * (workload.arrival_scv + cs2) / 2
    scales, above = [], 0.0
    for priority in workload.priorities:
        below = above + rho * priority.share
        mean_wait = fcfs * (1 - rho) / ((1 - above) * (1 - below))
        scales.append(max(mean_wait / p_wait, 1e-9) if p_wait > 0 else 1e-9)
        above = below
    return _Queue(p_wait, tuple(scales))


def _marginal_prefill(perf: ReplicaPerf, request: _Prompt) -> float:
    """Prefill seconds of one prompt inside a batch (no per-step overhead)."""
    pairs = request.uncached * (request.tokens - request.uncached / 2)
    return perf.prefill_seconds(request.uncached, pairs) - perf.calibration.prefill_overhead_seconds


@dataclass(frozen=True)
class _Decode:
    batch: float
    spread: float
    step0: float  # seconds a step, batch 0, with prefill interference
    step1: float  # seconds each sequence adds
    context: float  # mean context tokens of a running sequence

    def step(self, batch: float) -> float:
        return self.step0 + self.step1 * batch


def _decode(perf: ReplicaPerf, replicas: int, rate: float, workload: Workload,
            prefill_share: float) -> tuple[float, _Decode | None]:
    """The decode batch of one replica producing its share of the output tokens while
    `prefill_share` of its time goes to prefill, and its use of the replica's bandwidth
    (None, use >= 1: it cannot keep up)."""
    out = workload.output_tokens
    second_out = sum(v * v * w for v, w in out.points)
    context = workload.input_tokens.mean + second_out / (2 * out.mean)
    base = perf.decode_step_seconds(0, 0)
    per_sequence = perf.decode_step_seconds(1, context) - base
    free = 1 - prefill_share
    tokens_rate = rate * out.mean / replicas
    if free <= 0:
        return INFEASIBLE_USAGE, None
    step0, step1 = base / free, per_sequence / free
    usage = tokens_rate * step1
    if usage >= 1:
        return usage, None
    batch = tokens_rate * step0 / (1 - usage)
    return usage, _Decode(batch, math.sqrt(max(batch, 1e-9) * workload.arrival_scv), step0,
                          step1, context)


def predict(deployment: Deployment, workload: Workload, rate: float, ttft_target: float,
            tpot_target: float, *, quantiles: bool = True) -> Prediction:
    """The prediction at `rate` requests/s; `quantiles=False` leaves the TTFT quantiles NaN
    (the search needs only the attainment)."""
    prompts = _prompts(workload)
    decode_perf = deployment.decode
    threshold = deployment.short_prompt_threshold if deployment.disaggregated else math.inf
    local = [r for r in prompts if r.tokens < threshold]
    remote = [r for r in prompts if r.tokens >= threshold]
    local_weight = sum(r.weight for r in local)
    local_prefill = sum(r.weight * _marginal_prefill(decode_perf, r) for r in local)
    prefill_share = rate * local_prefill / deployment.decode_replicas
    usage = {"decode bandwidth": 0.0, "prefill compute": prefill_share, "KV memory": 0.0,
             "KV link": 0.0}
    # TTFT of each prompt: a queue's wait plus fixed seconds.
    pieces: list[tuple[float, float, int]] = []  # (weight, fixed seconds, queue index)
    queues: list[_Queue | None] = []
    if remote:
        prefill_perf = deployment.prefill
        assert prefill_perf is not None
        services = [(r.weight, prefill_perf.prefill_seconds(
            r.uncached, r.uncached * (r.tokens - r.uncached / 2))) for r in remote]
        # The pool's work per prompt: a busy pool batches prompts up to its token budget, so
        # one step's overhead is shared by the prompts it holds.
        overhead = prefill_perf.calibration.prefill_overhead_seconds
        work = [(r.weight, _marginal_prefill(prefill_perf, r) + overhead * min(
            1.0, r.uncached / prefill_perf.max_batched_tokens)) for r in remote]
        remote_weight = sum(w for w, _ in services)
        queues.append(_queue(rate * remote_weight, [(w / remote_weight, s) for w, s in work],
                             deployment.prefill_replicas, workload))
        usage["prefill compute"] = max(prefill_share, rate * sum(w * s for w, s in work)
                                       / deployment.prefill_replicas)
        if prefill_perf.kv_capacity_tokens() < workload.input_tokens.maximum:
            usage["KV memory"] = INFEASIBLE_USAGE
        link = min(prefill_perf.kv_link_bandwidth, decode_perf.kv_link_bandwidth)
        worst = max(remote, key=lambda r: r.tokens)
        usage["KV link"] = worst.tokens * prefill_perf.kv_bytes_per_token / link / ttft_target
    usage["decode bandwidth"], decode = _decode(decode_perf, deployment.decode_replicas, rate,
                                                workload, prefill_share)
    if decode is None or None in queues:
        return _infeasible(usage)
    batch90 = decode.batch + Z90 * decode.spread
    usage["KV memory"] = max(usage["KV memory"], (batch90 * decode.context
                                                  + workload.input_tokens.maximum)
                             / decode_perf.kv_capacity_tokens())
    usage["decode bandwidth"] = max(usage["decode bandwidth"],
                                    batch90 / decode_perf.max_num_seqs)
    running_step = decode.step(decode.batch)
    if remote:
        assert deployment.prefill is not None
        for r, (_, service) in zip(remote, services, strict=True):
            transfer = r.tokens * deployment.prefill.kv_bytes_per_token / link
            pieces.append((r.weight, service + transfer + running_step, 0))
    if local:
        # Prefill runs in what decode steps leave of each step's token budget.
        budget = max(1.0, decode_perf.max_batched_tokens - decode.batch)
        per_token = local_prefill / max(sum(r.weight * r.uncached for r in local), 1e-9)
        share = per_token * budget / (running_step + per_token * budget)
        local_services = [(r.weight / local_weight, _marginal_prefill(decode_perf, r) / share)
                          for r in local]
        queue = _queue(rate * local_weight, local_services, deployment.decode_replicas,
                       workload)
        usage["prefill compute"] = max(usage["prefill compute"], rate * local_weight * sum(
            w * s for w, s in local_services) / deployment.decode_replicas)
        if queue is None:
            return _infeasible(usage)
        queues.append(queue)
        first_step = running_step if deployment.disaggregated else 0.0
        for r, (_, service) in zip(local, local_services, strict=True):
            pieces.append((r.weight, service + first_step, len(queues) - 1))
    waits = [q for q in queues if q is not None]

    def ttft_cdf(t: float) -> float:
        total = 0.0
        for weight, fixed, index in pieces:
            for klass, priority in enumerate(workload.priorities):
                total += weight * priority.share * waits[index].cdf(klass, t - fixed)
        return total

    def tpot_cdf(t: float) -> float:
        if decode.step1 <= 0:
            return 1.0 if t >= decode.step0 else 0.0
        limit = (t - decode.step0) / decode.step1
        return _NORMAL.cdf((limit - decode.batch) / max(decode.spread, 1e-9))

    attainment = ttft_cdf(ttft_target) * tpot_cdf(tpot_target)
    return Prediction(
        feasible=max(v for k, v in usage.items() if k != "KV link") < 1.0,
        attainment=attainment,
        ttft_p50=_invert(ttft_cdf, 0.5) if quantiles else math.nan,
        ttft_p90=_invert(ttft_cdf, 0.9) if quantiles else math.nan,
        tpot_p50=decode.step(decode.batch), tpot_p90=decode.step(batch90), usage=usage)


def _infeasible(usage: dict[str, float]) -> Prediction:
    return Prediction(False, 0.0, math.inf, math.inf, math.inf, math.inf, usage)


def _invert(cdf: Callable[[float], float], q: float) -> float:
    """The smallest t with cdf(t) >= q (to 0.1%), by doubling then bisection."""
    high = 1e-3
    while cdf(high) < q:
        high *= 2
        if high > 1e6:
            return math.inf
    low = 0.0
    while high - low > max(1e-4, high * 1e-3):
        middle = (low + high) / 2
        if cdf(middle) >= q:
            high = middle
        else:
            low = middle
    return high
