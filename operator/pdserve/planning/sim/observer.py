"""What Prometheus would tell the planner, and nothing more.

Scrapes every `scrape_interval` (ready and draining pods plus the router), answers queries with
data at least `lag` seconds old, computes rate() over `rate_window` per series and sums, keeps a
gone pod's series for `lookback` seconds (they linger in instant queries), returns histogram
averages as sum-rate / count-rate (NaN with no completions), adds multiplicative noise, and
answers None while an outage lasts."""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass

from pdserve.autoscaler import MetricsSnapshot, RoleMetrics
from pdserve.autoscaler.prometheus_source import KV_SEQUENCES_MIN_USAGE
from pdserve.planning.sim.pods import Pod

NAN = math.nan


@dataclass(frozen=True)
class ObserverConfig:
    scrape_interval: float = 15.0
    lag: float = 5.0
    rate_window: float = 60.0
    lookback: float = 300.0
    peak_lookback: float = 300.0
    noise: float = 0.05
    outages: tuple[tuple[float, float], ...] = ()


# Sample layout per pod: (time, prompt tokens, requests, generation tokens, running, waiting, kv)
PodSample = tuple[float, float, float, float, float, float, float]
# Router: (time, ttft sum, ttft count, itl sum, itl count, arrivals)
RouterSample = tuple[float, float, float, float, float, float]


class Observer:
    def __init__(self, cfg: ObserverConfig, seed: int) -> None:
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.series: dict[str, tuple[str, deque[PodSample]]] = {}
        self.router: deque[RouterSample] = deque()

    def scrape(self, now: float, pods: list[Pod], router: tuple[float, ...]) -> None:
        keep = now - self.cfg.lookback - self.cfg.rate_window
        for pod in pods:
            if pod.state not in ("ready", "draining"):
                continue
            running, waiting, kv = pod.gauges()
            entry = self.series.setdefault(pod.name, (pod.role, deque()))
            entry[1].append((now, pod.prompt_tokens, pod.requests, pod.generation_tokens,
                             running, waiting, kv))
        for name in list(self.series):
            samples = self.series[name][1]
            while samples and samples[0][0] < keep:
                samples.popleft()
            if not samples:
                del self.series[name]
        self.router.append((now, router[0], router[1], router[2], router[3], router[4]))
        while self.router and self.router[0][0] < keep:
            self.router.popleft()

    def available(self, now: float) -> bool:
        return not any(start <= now < end for start, end in self.cfg.outages)

    def _noisy(self, value: float) -> float:
        if not math.isfinite(value) or self.cfg.noise <= 0:
            return value
        return max(0.0, value * (1.0 + self.rng.gauss(0.0, self.cfg.noise)))

    def _visible(self, samples: deque[PodSample], at: float) -> list[PodSample]:
        return [s for s in samples if s[0] <= at]

    def _latest(self, role: str, at: float) -> list[PodSample]:
        """Each of the role's series' newest sample within the lookback (an instant vector; a
        gone pod's lingers like the others)."""
        return [v[-1] for r, samples in self.series.values() if r == role
                for v in [self._visible(samples, at)] if v and v[-1][0] > at - self.cfg.lookback]

    def _fullest(self, role: str, at: float) -> float:
        """max(running) over the role's series."""
        running = [s[4] for s in self._latest(role, at)]
        return max(running) if running else NAN

    def _kv_sequences(self, role: str, at: float) -> float:
        """avg(running / (kv usage >= KV_SEQUENCES_MIN_USAGE)) over the role's series."""
        values = [s[4] / s[6] for s in self._latest(role, at) if s[6] >= KV_SEQUENCES_MIN_USAGE]
        return sum(values) / len(values) if values else NAN

    def _role(self, role: str, at: float) -> tuple[float, float, float, float, float, float]:
        """(prompt rate, request rate, generation rate, running, waiting, mean kv) of one role."""
        rates = [0.0, 0.0, 0.0]
        gauges = [0.0, 0.0]
        kv: list[float] = []
        any_rate = any_gauge = False
        for series_role, samples in self.series.values():
            if series_role != role:
                continue
            visible = self._visible(samples, at)
            window = [s for s in visible if s[0] > at - self.cfg.rate_window]
            if len(window) >= 2:
                span = window[-1][0] - window[0][0]
                for i in range(3):
                    rates[i] += (window[-1][1 + i] - window[0][1 + i]) / span
                any_rate = True
            if visible and visible[-1][0] > at - self.cfg.lookback:
                gauges[0] += visible[-1][4]
                gauges[1] += visible[-1][5]
                if math.isfinite(visible[-1][6]):
                    kv.append(visible[-1][6])
                any_gauge = True
        out_rates = rates if any_rate else [NAN, NAN, NAN]
        out_gauges = gauges if any_gauge else [NAN, NAN]
        return (*out_rates, *out_gauges, sum(kv) / len(kv) if kv else NAN)  # type: ignore[return-value]

    def _peak_arrivals(self, at: float) -> float:
        """max_over_time of the 30 s arrival rate over the last `peak_lookback` seconds."""
        visible = [s for s in self.router if at - self.cfg.peak_lookback - 30.0 < s[0] <= at]
        peaks = [(b[5] - a[5]) / (b[0] - a[0]) for a, b in zip(visible, visible[2:],
                                                               strict=False)]
        return max(peaks) if peaks else NAN

    def _router(self, at: float) -> tuple[float, float, float]:
        """(mean TTFT, mean ITL, arrivals/s) over the rate window."""
        window = [s for s in self.router if at - self.cfg.rate_window < s[0] <= at]
        if len(window) < 2:
            return NAN, NAN, NAN
        first, last = window[0], window[-1]
        ttft_n, itl_n = last[2] - first[2], last[4] - first[4]
        ttft = (last[1] - first[1]) / ttft_n if ttft_n > 0 else NAN
        itl = (last[3] - first[3]) / itl_n if itl_n > 0 else NAN
        return ttft, itl, (last[5] - first[5]) / (last[0] - first[0])

    def snapshot(self, now: float) -> MetricsSnapshot | None:
        if not self.available(now):
            return None
        at = now - self.cfg.lag
        p_prompt, p_requests, _, p_running, p_waiting, _ = self._role("prefill", at)
        _, d_requests, d_generation, d_running, d_waiting, d_kv = self._role("decode", at)
        ttft, itl, arrivals = self._router(at)
        n = self._noisy
        return MetricsSnapshot(
            now,
            RoleMetrics(n(p_prompt), n(p_requests), n(ttft), p_running, p_waiting, NAN),
            RoleMetrics(n(d_generation), n(d_requests), n(itl), d_running, d_waiting, n(d_kv),
                        self._fullest("decode", at), self._kv_sequences("decode", at)),
            arrival_rate=n(arrivals), peak_arrival_rate=n(self._peak_arrivals(at)))

    def pod_in_flight(self, now: float) -> dict[str, float]:
        """Per-pod running + waiting as last scraped (what the loop would annotate from)."""
        at = now - self.cfg.lag
        out: dict[str, float] = {}
        for name, (_, samples) in self.series.items():
            visible = self._visible(samples, at)
            if visible:
                out[name] = visible[-1][4] + visible[-1][5]
        return out
