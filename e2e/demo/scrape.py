"""Reading the processes' /metrics pages (Prometheus text) the way Prometheus would: counters
and histogram sums as of one scrape, rates and means between two scrapes; and from two scrapes,
the planner's snapshot where no Prometheus can run (the same inputs as the operator's queries in
pdserve.autoscaler.prometheus_source)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from e2e.local_processes import http_get
from pdserve.autoscaler import MetricsSnapshot, RoleMetrics

if TYPE_CHECKING:
    from e2e.demo.serving import Endpoint, Stack


@dataclass(frozen=True)
class Scrape:
    """Every sample of one /metrics page, summed over labels, at `time` (monotonic seconds)."""

    time: float
    samples: Mapping[str, float]

    def value(self, name: str) -> float:
        return self.samples.get(name, 0.0)


def scrape(process: Endpoint) -> Scrape:
    status, text = http_get(process.url + "/metrics")
    if status != 200:
        raise RuntimeError(f"{process.name} /metrics answered HTTP {status}")
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if math.isfinite(sample.value):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return Scrape(time.monotonic(), totals)


def scrape_all(processes: Sequence[Endpoint]) -> list[Scrape]:
    return [scrape(process) for process in processes]


def delta(before: list[Scrape], after: list[Scrape], name: str) -> float:
    """Increase of a counter summed over the processes of one role."""
    return sum(a.value(name) - b.value(name) for b, a in zip(before, after, strict=True))


def rate(before: list[Scrape], after: list[Scrape], name: str) -> float:
    seconds = max(a.time for a in after) - min(b.time for b in before)
    return delta(before, after, name) / seconds if seconds > 0 else math.nan


def mean(before: list[Scrape], after: list[Scrape], histogram: str) -> float:
    """Mean of a histogram's observations between the scrapes; NaN without observations."""
    count = delta(before, after, histogram + "_count")
    return delta(before, after, histogram + "_sum") / count if count > 0 else math.nan


def gauge_sum(after: list[Scrape], name: str) -> float:
    return sum(s.value(name) for s in after)


def snapshot(before: dict[str, list[Scrape]], after: dict[str, list[Scrape]],
             now: float) -> MetricsSnapshot:
    p0, p1 = before["prefill"], after["prefill"]
    d0, d1 = before["decode"], after["decode"]
    r0, r1 = before["router"], after["router"]
    prompt = rate(p0, p1, "pdserve_prompt_tokens_total")
    hits = rate(p0, p1, "pdserve_prefix_cache_hits_total")
    prefill = RoleMetrics(
        token_rate=max(0.0, prompt - hits),
        request_rate=rate(p0, p1, "pdserve_time_to_first_token_seconds_count"),
        latency_seconds=_first_known(mean(r0, r1, "pdserve_time_to_first_token_seconds"),
                                     mean(p0, p1, "pdserve_time_to_first_token_seconds")),
        running=gauge_sum(p1, "pdserve_requests_running"),
        waiting=gauge_sum(p1, "pdserve_requests_waiting"))
    decode = RoleMetrics(
        token_rate=rate(d0, d1, "pdserve_generation_tokens_total"),
        request_rate=rate(d0, d1, "pdserve_e2e_request_latency_seconds_count"),
        latency_seconds=_first_known(mean(r0, r1, "pdserve_inter_token_latency_seconds"),
                                     mean(d0, d1, "pdserve_inter_token_latency_seconds")),
        running=gauge_sum(d1, "pdserve_requests_running"),
        waiting=gauge_sum(d1, "pdserve_requests_waiting"),
        kv_usage=gauge_sum(d1, "pdserve_kv_usage_ratio") / len(d1))
    arrivals = rate(r0, r1, "pdserve_router_requests_total")
    return MetricsSnapshot(now, prefill, decode, arrival_rate=arrivals)


def _first_known(*values: float) -> float:
    return next((v for v in values if math.isfinite(v)), math.nan)


def _scrape_roles(stack: Stack) -> dict[str, list[Scrape]]:
    return {"prefill": scrape_all(stack.prefill), "decode": scrape_all(stack.decode),
            "router": scrape_all([stack.router])}


class ScrapeWindow:
    """A load window measured by scraping every process at its start and end."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.before: dict[str, list[Scrape]] = {}

    def begin(self) -> None:
        self.before = _scrape_roles(self.stack)

    def end(self, now: float) -> MetricsSnapshot:
        return snapshot(self.before, _scrape_roles(self.stack), now)
