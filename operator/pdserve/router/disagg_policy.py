"""Conditional disaggregation: per request, whether the prompt goes through the prefill tier
(prefill worker, KV handoff, decode worker) or the decode worker prefills it itself. Pure: no
I/O, no clock (the proxy feeds it the timings it measured).

Both paths compute the prompt's uncached tokens once; they differ in who waits for it:
- through the prefill tier the request itself waits longer: the prefill tier's queue, the KV
  handoff and one more hop (`remote_delay`, less any tokens the prefill worker has cached that
  the decode worker has not);
- on the decode worker the requests already there wait: each stream running or queued on it is
  held up while the prompt is computed (`interference`), which is what raises inter-token
  latency under load.
The prompt goes to the prefill tier when that is faster for it (its prefix cache holds more).
Otherwise it stays on the decode worker when the local prefills of the last seconds, this one
included, take no more than LOCAL_PREFILL_BUDGET of the worker's time (a stall adds its length
to one gap of every stream, so the streams' inter-token latency grows by about that share: a 5%
budget keeps it within 5% of always-on disaggregation's); or when the remote delay exceeds the
interference (no stream there, or a queued prefill tier). Otherwise it goes to the prefill tier.
So at low load nearly every prompt stays (time to first token as aggregated serving's), and
under load the decode worker keeps only what its budget allows, the shortest prompts first in
effect. A decode worker without free KV blocks for the prompt sends it to the prefill tier: the
KV is computed there while it waits for blocks.

Timings come from the prefill workers' answers (headers named in runtime/disagg/headers.py):
the prefill's seconds as a line over the prompt's computed tokens (`LinearFit`: its slope is
what a local prefill stalls the streams by, its mean the service time behind a queue), measured
only on calls sent to a prefill worker with an empty queue (no waiting in them), the handoff's
seconds the same way, and the hop (the call's time beyond the two). The decode worker is
assumed to compute a token as fast as a prefill worker (one model; the same accelerator in the
usual deployment). Until the first measurement, and in mode `always`, the prompt-length
threshold decides: prompts of fewer estimated tokens stay on the decode worker, the rest go
through the prefill tier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

from pdserve.api.roles import DisaggregationMode
from pdserve.router.metrics import LOCAL_CHEAPER, PREFILL_DECODE, SHORT_PROMPT, Disaggregation

MODES: tuple[str, ...] = get_args(DisaggregationMode)
LOCAL_PREFILL_BUDGET = 0.05  # of a decode worker's time that its local prefills may take
BUDGET_WINDOW_SECONDS = 10.0  # the local prefills' time decays with this time constant
FIT_WEIGHT = 0.05  # of each new sample: about the last forty prefills count
MIN_SPREAD = 0.1  # of the mean prompt length: samples closer than that fit no slope


@dataclass(frozen=True)
class RequestSignals:
    """What the router knows about one request and the workers it would use."""

    tokens: int  # estimated prompt tokens
    decode_cached: int  # of them, in the decode worker's prefix cache (the router's index)
    prefill_cached: int  # of them, in the chosen prefill worker's prefix cache
    decode_streams: int  # requests running or queued on the decode worker
    decode_has_room: bool  # its free KV blocks (less the router's claims) hold the prompt
    prefill_queue: int  # requests queued or in flight on the least busy prefill worker
    decode_local_share: float = 0.0  # of the decode worker's time, its recent local prefills


class LinearFit:
    """seconds ~ fixed + per_token x tokens, by least squares over exponentially decaying
    samples. A prompt's prefill has a fixed part (an engine step, a hop) that a local prefill
    merged into a running decode step does not pay: only the per-token part stalls the streams
    there. While the samples hardly vary in length the slope is not known: the mean seconds per
    token stands in for it (an upper bound)."""

    def __init__(self) -> None:
        self.weight = self.tokens = self.seconds = self.tokens_sq = self.tokens_seconds = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        keep = 1.0 - FIT_WEIGHT
        self.weight = keep * self.weight + 1.0
        self.tokens = keep * self.tokens + tokens
        self.seconds = keep * self.seconds + seconds
        self.tokens_sq = keep * self.tokens_sq + tokens * tokens
        self.tokens_seconds = keep * self.tokens_seconds + tokens * seconds

    @property
    def measured(self) -> bool:
        return self.weight > 0.0

    def mean_seconds(self) -> float:
        return self.seconds / self.weight if self.weight else 0.0

    def per_token(self) -> float:
        if not self.weight:
            return 0.0
        ratio = self.seconds / max(self.tokens, 1.0)
        mean = self.tokens / self.weight
        variance = self.tokens_sq / self.weight - mean * mean
        if variance < (MIN_SPREAD * mean) ** 2:
            return ratio
        slope = (self.tokens_seconds / self.weight - mean * self.mean_seconds()) / variance
        return min(max(slope, 0.0), ratio)

    def predict(self, tokens: int) -> float:
        per_token = self.per_token()
        fixed = max(self.mean_seconds() - per_token * self.tokens / max(self.weight, 1e-9), 0.0)
        return fixed + per_token * tokens


class PrefillTimings:
    """What a prefill costs, learnt from the prefill workers' answers."""

    def __init__(self) -> None:
        self.compute = LinearFit()  # on an idle prefill worker: arrival to first token
        self.handoff = LinearFit()
        self.hop_seconds: float | None = None

    @property
    def measured(self) -> bool:
        return self.compute.measured

    def observe(self, computed_tokens: int, prefill_seconds: float, handoff_seconds: float,
                call_seconds: float, idle_worker: bool) -> None:
        """One prefill call: `computed_tokens` the worker computed (not cached),
        `prefill_seconds` from its arrival to the first token, `handoff_seconds` of the KV push,
        `call_seconds` as the router saw it; `idle_worker`: nothing was queued there."""
        self.handoff.add(computed_tokens, handoff_seconds)
        hop = max(call_seconds - prefill_seconds - handoff_seconds, 0.0)
        self.hop_seconds = hop if self.hop_seconds is None else (
            self.hop_seconds + FIT_WEIGHT * (hop - self.hop_seconds))
        if idle_worker:  # otherwise prefill_seconds holds the worker's queue too
            self.compute.add(computed_tokens, prefill_seconds)


class LocalPrefills:
    """How much of one decode worker's time the prompts the router kept there took lately: their
    estimated prefill seconds, decaying exponentially over BUDGET_WINDOW_SECONDS."""

    def __init__(self) -> None:
        self._seconds = 0.0
        self._at = 0.0

    def share(self, now: float) -> float:
        return self._decayed(now) / BUDGET_WINDOW_SECONDS

    def add(self, now: float, seconds: float) -> None:
        self._seconds = self._decayed(now) + seconds
        self._at = now

    def _decayed(self, now: float) -> float:
        return self._seconds * math.exp(-max(now - self._at, 0.0) / BUDGET_WINDOW_SECONDS)


def local_prefill_seconds(signals: RequestSignals, timings: PrefillTimings) -> float:
    """What a local prefill of the prompt adds to the decode worker's steps."""
    return max(signals.tokens - signals.decode_cached, 0) * timings.compute.per_token()


def choose_path(mode: str, signals: RequestSignals, timings: PrefillTimings,
                short_prompt_threshold: int) -> Disaggregation:
    """PREFILL_DECODE, or the reason the decode worker prefills the prompt itself."""
    if mode == "always" or not timings.measured:
        if signals.tokens < short_prompt_threshold:
            return SHORT_PROMPT
        return PREFILL_DECODE
    if not signals.decode_has_room:
        return PREFILL_DECODE
    per_token = timings.compute.per_token()
    local = max(signals.tokens - signals.decode_cached, 0)
    remote = max(signals.tokens - signals.prefill_cached, 0)
    stall = local_prefill_seconds(signals, timings)
    # What the request waits for beyond a local prefill merged into the decode worker's steps:
    # the prefill tier's queue, a whole prefill there (its fixed part too), handoff and hop.
    remote_delay = (signals.prefill_queue * timings.compute.mean_seconds()
                    + timings.compute.predict(remote) - local * per_token
                    + timings.handoff.predict(remote) + (timings.hop_seconds or 0.0))
    if remote_delay < 0:  # the prefill tier is the faster (its prefix cache holds more)
        return PREFILL_DECODE
    if signals.decode_local_share + stall / BUDGET_WINDOW_SECONDS <= LOCAL_PREFILL_BUDGET:
        return LOCAL_CHEAPER
    interference = signals.decode_streams * stall
    return LOCAL_CHEAPER if interference <= remote_delay else PREFILL_DECODE
