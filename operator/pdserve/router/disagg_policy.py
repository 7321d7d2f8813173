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
The router takes the path that adds less latency in total: decode only when interference <=
remote delay. An idle decode worker has no one to hold up, so at low load every prompt stays
there and time to first token is that of aggregated serving; under load the streams a local
prefill would stall outweigh the handoff, so prompts go to the prefill tier as they do under
always-on disaggregation. A decode worker without free KV blocks for the prompt sends it to the
prefill tier: the KV is computed there while it waits for blocks, instead of after.

Timings come from the prefill workers' answers (headers named in runtime/disagg/headers.py):
seconds per prompt token, measured only on calls sent to a prefill worker with an empty queue
(pure compute, no waiting), the handoff's seconds per token, and the hop (the call's time
beyond the two). The decode worker is assumed to compute a token as fast as a prefill worker
(one model; the same accelerator in the usual deployment). Until the first measurement, and in
mode `always`, the prompt-length threshold decides: prompts of fewer estimated tokens stay on
the decode worker, the rest go through the prefill tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from pdserve.api.roles import DisaggregationMode
from pdserve.router.metrics import LOCAL_CHEAPER, PREFILL_DECODE, SHORT_PROMPT, Disaggregation

MODES: tuple[str, ...] = get_args(DisaggregationMode)
EWMA_WEIGHT = 0.2  # of each new sample: about the last ten prefills count


@dataclass(frozen=True)
class RequestSignals:
    """What the router knows about one request and the workers it would use."""

    tokens: int  # estimated prompt tokens
    decode_cached: int  # of them, in the decode worker's prefix cache (the router's index)
    prefill_cached: int  # of them, in the chosen prefill worker's prefix cache
    decode_streams: int  # requests running or queued on the decode worker
    decode_has_room: bool  # its free KV blocks (less the router's claims) hold the prompt
    prefill_queue: int  # requests queued or in flight on the least busy prefill worker


class PrefillTimings:
    """Moving averages of what a prefill costs, from the prefill workers' answers."""

    def __init__(self) -> None:
        self.seconds_per_token: float | None = None
        self.handoff_seconds_per_token: float | None = None
        self.hop_seconds: float | None = None
        self.service_seconds: float | None = None  # one prefill on an idle worker

    @property
    def measured(self) -> bool:
        return self.seconds_per_token is not None

    def observe(self, computed_tokens: int, prefill_seconds: float, handoff_seconds: float,
                call_seconds: float, idle_worker: bool) -> None:
        """One prefill call: `computed_tokens` the worker computed (not cached),
        `prefill_seconds` from its arrival to the first token, `handoff_seconds` of the KV push,
        `call_seconds` as the router saw it; `idle_worker`: nothing was queued there."""
        tokens = max(computed_tokens, 1)
        self.handoff_seconds_per_token = _ewma(self.handoff_seconds_per_token,
                                               handoff_seconds / tokens)
        self.hop_seconds = _ewma(self.hop_seconds,
                                 max(call_seconds - prefill_seconds - handoff_seconds, 0.0))
        if idle_worker:  # otherwise prefill_seconds holds the worker's queue too
            self.seconds_per_token = _ewma(self.seconds_per_token, prefill_seconds / tokens)
            self.service_seconds = _ewma(self.service_seconds, prefill_seconds)


def _ewma(mean: float | None, sample: float) -> float:
    return sample if mean is None else mean + EWMA_WEIGHT * (sample - mean)


def choose_path(mode: str, signals: RequestSignals, timings: PrefillTimings,
                short_prompt_threshold: int) -> Disaggregation:
    """PREFILL_DECODE, or the reason the decode worker prefills the prompt itself."""
    if mode == "always" or timings.seconds_per_token is None:
        if signals.tokens < short_prompt_threshold:
            return SHORT_PROMPT
        return PREFILL_DECODE
    if not signals.decode_has_room:
        return PREFILL_DECODE
    per_token = timings.seconds_per_token
    local = max(signals.tokens - signals.decode_cached, 0)
    remote = max(signals.tokens - signals.prefill_cached, 0)
    interference = signals.decode_streams * local * per_token
    remote_delay = (signals.prefill_queue * (timings.service_seconds or 0.0)
                    + remote * (per_token + (timings.handoff_seconds_per_token or 0.0))
                    + (timings.hop_seconds or 0.0) - local * per_token)
    return LOCAL_CHEAPER if interference <= remote_delay else PREFILL_DECODE
