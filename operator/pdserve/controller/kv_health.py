"""Whether an LLMService's prefill tier hands KV to decode: the KVTransferHealthy condition from
the data plane's counters over one window (pure: figures in, (status, reason, message) out).

The figures are increases over the window of the router's disaggregation decisions
(pdserve_router_disaggregation_total by reason) and, where Prometheus scrapes the workers, of
their KV transfer counters. A long prompt is one the router would send through the prefill tier
(not a short one): it reaches decode with its KV (a handoff) or without (no prefill peer of the
decode worker's model, no KV target, every prefill attempt failed, or decode recomputed a
handoff whose KV never arrived). The condition is False when most long prompts of the window
reached decode without KV, or when the workers' failed transfers outnumber the completed ones:
a majority, not "every request", so that a break shows within two intervals of a window of two
intervals, and one stray failure (a prefill pod killed mid-transfer) never flips it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pdserve.autoscaler.prometheus_source import Selector
from pdserve.router import metrics as router

CONDITION = "KVTransferHealthy"
DEFAULT_INTERVAL_SECONDS = 30.0  # the operator's --kv-health-interval
Status = Literal["True", "False", "Unknown"]
NAN = float("nan")

# The reasons of pdserve_router_disaggregation_total, one per path.
HANDOFF = router.PREFILL_DECODE[1]
SHORT_PROMPT = router.SHORT_PROMPT[1]
LOCAL_CHEAPER = router.LOCAL_CHEAPER[1]
NO_PREFILL_PEER = router.NO_PREFILL_PEER[1]
NO_KV_TARGET = router.NO_KV_TARGET[1]
PREFILL_FAILED = router.PREFILL_FAILED[1]
DECODE_FULL = router.DECODE_FULL[1]
DECISIONS_METRIC = "pdserve_router_disaggregation_total"


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str
    message: str


@dataclass(frozen=True)
class KVFigures:
    """Counts over the last `window_seconds`; NaN where no series answered."""

    window_seconds: float
    decisions: Mapping[str, float]  # the router's, by reason
    transfers: float = NAN  # pushes the prefill workers completed
    transfer_failures: float = NAN  # pushes the prefill workers failed
    recomputed: float = NAN  # transfers decode did not hold: it prefilled the prompt itself
    prefill_requests: float = NAN  # requests the prefill workers answered

    def decided(self, reason: str) -> float:
        value = self.decisions.get(reason, 0.0)
        return value if math.isfinite(value) else 0.0


def _known(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _n(value: float) -> str:
    """A count (increase() extrapolates: 9.7 requests reads as 10)."""
    return f"{round(value):d}"


def condition(verdict: Verdict, previous: Mapping[str, Any] | None, generation: int | None,
              when: str) -> dict[str, Any]:
    """The condition as applied: its transition time kept while its status holds."""
    since = previous.get("lastTransitionTime") if previous and previous.get(
        "status") == verdict.status else None
    entry: dict[str, Any] = {"type": CONDITION, "status": verdict.status,
                             "reason": verdict.reason, "message": verdict.message[:32768],
                             "lastTransitionTime": since or when}
    if generation is not None:
        entry["observedGeneration"] = generation
    return entry


def no_transfer_intended(prefill_replicas: int) -> Verdict | None:
    """An aggregated plan (no prefill replicas) moves no KV by design: said so, never False."""
    if prefill_replicas > 0:
        return None
    return Verdict("True", "NoTransferIntended",
                   "prefill has 0 replicas (aggregated): decode prefills every prompt, no KV "
                   "transfer is intended")


def not_reported(message: str) -> Verdict:
    return Verdict("Unknown", "NotReported", message)


def prometheus_unavailable(detail: str) -> Verdict:
    return Verdict("Unknown", "PrometheusUnavailable",
                   f"cannot read the data plane's KV counters: {detail}"[:1024])


def assess(figures: KVFigures, source: str) -> Verdict:
    """The condition for one window of figures read from `source` (named in messages)."""
    window = f"the last {_n(figures.window_seconds)}s ({source})"
    handoffs = figures.decided(HANDOFF)
    no_peer, no_target = figures.decided(NO_PREFILL_PEER), figures.decided(NO_KV_TARGET)
    failed, full = figures.decided(PREFILL_FAILED), figures.decided(DECODE_FULL)
    long = handoffs + no_peer + no_target + failed + full
    if round(long) < 1:
        short, local = figures.decided(SHORT_PROMPT), figures.decided(LOCAL_CHEAPER)
        kept = [f"{_n(short)} short ones"] if round(short) else []
        if round(local):
            kept.append(f"{_n(local)} that the conditional disaggregation kept on decode")
        return Verdict("Unknown", "NoTraffic",
                       f"no long prompt went to the prefill tier in {window}"
                       + (f" ({' and '.join(kept)}, which decode prefilled itself)"
                          if kept else "") + ": nothing to judge the KV path by")
    # Decode recomputes a prompt whose transfer it does not hold: after every prefill attempt
    # failed or no decode worker had room (both counted by the router too), or after a handoff
    # whose KV never arrived.
    lost = min(handoffs, max(0.0, _known(figures.recomputed) - failed - full))
    with_kv = handoffs - lost
    without = long - with_kv
    transfers, failures = _known(figures.transfers), _known(figures.transfer_failures)
    # Prefill workers count a request they answered (their KV pushed): not one refused later.
    prefill_tier = (f"; the prefill workers answered {_n(figures.prefill_requests)} requests"
                    if math.isfinite(figures.prefill_requests) else "")
    counted = (f"; prefill workers completed {_n(transfers)} KV transfers and failed "
               f"{_n(failures)}" if math.isfinite(figures.transfers) else "")
    head = f"{_n(without)} of {_n(long)} long prompts in {window} reached decode without KV"
    if without > with_kv:
        causes = {
            "KVTransferFailing": (failed + lost, f"{head}: KV transfers from prefill to decode "
                                  f"fail ({_n(failed)} handoffs failed on every prefill worker "
                                  f"tried, {_n(lost)} handed-off KV never arrived) and decode "
                                  f"recomputes the prompt{counted}"),
            "NoPrefillPeer": (no_peer, f"{head}: no ready prefill worker serves the decode "
                              f"workers' model ({_n(no_peer)} prefilled on decode)"
                              f"{prefill_tier}"),
            "DecodeFull": (full, f"{head}: no decode worker had free KV blocks for the "
                           f"prefilled prompt ({_n(full)} recomputed on decode): decode is "
                           "overloaded"),
            "PrefillNotUsed": (no_target, f"{head}: the router has no prefill tier or the "
                               f"decode workers report no KV port ({_n(no_target)} prefilled "
                               f"on decode){prefill_tier}"),
        }
        reason = max(causes, key=lambda name: causes[name][0])
        return Verdict("False", reason, causes[reason][1])
    if failures > transfers:
        return Verdict("False", "KVTransferFailing",
                       f"prefill workers failed {_n(failures)} KV transfers and completed "
                       f"{_n(transfers)} in {window}; retries on other prefill workers still "
                       f"handed {_n(with_kv)} of {_n(long)} long prompts' KV to decode")
    message = f"{_n(with_kv)} of {_n(long)} long prompts in {window} reached decode with their KV"
    if round(without):
        message += (f" ({_n(without)} without: {_n(no_peer)} no prefill peer, {_n(no_target)} "
                    f"no KV target, {_n(failed)} failed handoffs, {_n(full)} decode full, "
                    f"{_n(lost)} KV never arrived)")
    return Verdict("True", "KVMoving", message + counted)


# --- the same figures from Prometheus, by the planner's label contract -----------------------


def queries(sel: Selector) -> dict[str, str]:
    """PromQL of each figure over the selector's window (the router's decisions by reason)."""
    w = sel.window

    def increase(metric: str, role: str | None) -> str:
        return f"sum(increase({metric}{sel.labels(role)}[{w}]))"

    return {
        "decisions": f"sum by (reason) (increase({DECISIONS_METRIC}{sel.labels(None)}[{w}]))",
        "transfers": increase("pdserve_kv_transfer_seconds_count", "prefill"),
        "transfer_failures": increase("pdserve_kv_transfer_failures_total", "prefill"),
        "recomputed": increase("pdserve_kv_transfer_fallbacks_total", "decode"),
        "prefill_requests": increase("pdserve_time_to_first_token_seconds_count", "prefill"),
    }


def figures_from(results: Mapping[str, Sequence[tuple[Mapping[str, str], float]]],
                 window_seconds: float) -> KVFigures:
    """KVFigures from each query's (labels, value) series; a query without series is NaN."""
    def one(name: str) -> float:
        found = results.get(name) or []
        return found[0][1] if found else NAN

    decisions = {labels.get("reason", ""): value for labels, value in results.get("decisions", [])}
    return KVFigures(window_seconds, decisions, transfers=one("transfers"),
                     transfer_failures=one("transfer_failures"), recomputed=one("recomputed"),
                     prefill_requests=one("prefill_requests"))


# --- or from the router pods' own counters, where no Prometheus is configured ----------------

RouterCounters = Mapping[str, Mapping[str, float]]  # pod -> reason -> cumulative count


def figures_between(before: RouterCounters, after: RouterCounters,
                    window_seconds: float) -> KVFigures | None:
    """The router's decisions between two reads of its pods' counters (a pod restarted since
    counts from zero); None when no pod was read both times."""
    common = set(before) & set(after)
    if not common:
        return None
    decisions: dict[str, float] = {}
    for pod in common:
        for reason, value in after[pod].items():
            previous = before[pod].get(reason, 0.0)
            decisions[reason] = decisions.get(reason, 0.0) + (
                value - previous if value >= previous else value)
    return KVFigures(window_seconds, decisions)
