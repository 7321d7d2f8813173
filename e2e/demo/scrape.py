"""Reading the processes' /metrics pages (Prometheus text) the way Prometheus would: counters
and histogram sums as of one scrape, rates and means between two scrapes."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from e2e.local_processes import Process, http_get


@dataclass(frozen=True)
class Scrape:
    """Every sample of one /metrics page, summed over labels, at `time` (monotonic seconds)."""

    time: float
    samples: Mapping[str, float]

    def value(self, name: str) -> float:
        return self.samples.get(name, 0.0)


def scrape(process: Process) -> Scrape:
    status, text = http_get(process.url + "/metrics")
    if status != 200:
        raise RuntimeError(f"{process.name} /metrics answered HTTP {status}")
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if math.isfinite(sample.value):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return Scrape(time.monotonic(), totals)


def scrape_all(processes: list[Process]) -> list[Scrape]:
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
