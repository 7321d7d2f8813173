"""The planner's view of the world, from Prometheus (PromQL via prometheus-api-client).

Every query selects by the labels a scrape configuration gives pdserve's pods (`namespace`,
`llmservice`, `role` and `pod`: the contract in scrape_labels), so the same queries work
in-cluster and against local processes labelled the same way. Missing series and empty
histograms come back as NaN; a failing Prometheus as PrometheusUnavailable."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from pdserve.autoscaler.scrape_labels import LLMSERVICE, NAMESPACE, POD, ROLE
from pdserve.autoscaler.snapshot import NAN, MetricsSnapshot, RoleMetrics

QueryFn = Callable[[str], list[dict[str, Any]]]
# Short-term arrival peaks: the highest 30 s rate over the last 5 minutes.
PEAK_RATE_WINDOW, PEAK_LOOKBACK, PEAK_STEP = "30s", "5m", "15s"


class PrometheusUnavailable(RuntimeError):
    """Prometheus did not answer (connection refused, timeout, HTTP or PromQL error)."""


@dataclass(frozen=True)
class Selector:
    namespace: str
    llmservice: str
    window_seconds: int = 120

    def labels(self, role: str | None = None) -> str:
        parts = [f'{NAMESPACE}="{_escape(self.namespace)}"',
                 f'{LLMSERVICE}="{_escape(self.llmservice)}"']
        if role is not None:
            parts.append(f'{ROLE}="{role}"')
        return "{" + ",".join(parts) + "}"

    @property
    def window(self) -> str:
        return f"{self.window_seconds}s"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


# The router's per-class TTFT histogram and its class label (a label of the series itself, set
# by the router, not by the scrape configuration).
CLASS_TTFT = "pdserve_router_class_time_to_first_token_seconds"
PRIORITY_CLASS = "priority_class"


def _mean(sel: Selector, histogram: str, role: str, by: str = "") -> str:
    """A histogram's mean over the rate window (per `by` label when given)."""
    group = f" by ({by})" if by else ""
    return (f"sum{group}(rate({histogram}_sum{sel.labels(role)}[{sel.window}])) / "
            f"sum{group}(rate({histogram}_count{sel.labels(role)}[{sel.window}]))")


def class_ttft_query(sel: Selector) -> str:
    """Mean TTFT per priority class at the router: the statistic and selectors of
    `router_ttft`, one series per class. Apart from `queries`: a service without priority
    classes has no such series, and every one of `queries` answers for a serving service."""
    return _mean(sel, CLASS_TTFT, "router", by=PRIORITY_CLASS)


# Sequences per full decode KV cache (running / usage) is noise while little KV is in use: the
# query is empty below this usage, and the planner keeps its other estimates.
KV_SEQUENCES_MIN_USAGE = 0.1


def queries(sel: Selector) -> dict[str, str]:
    """The PromQL of every input, by name (also shown in docs and tests)."""
    w = sel.window

    def rate(metric: str, role: str | None) -> str:
        return f"sum(rate({metric}{sel.labels(role)}[{w}]))"

    return {
        "prefill_prompt_rate": rate("pdserve_prompt_tokens_total", "prefill"),
        "prefill_cache_hit_rate": rate("pdserve_prefix_cache_hits_total", "prefill"),
        "prefill_request_rate": rate("pdserve_time_to_first_token_seconds_count", "prefill"),
        "decode_generation_rate": rate("pdserve_generation_tokens_total", "decode"),
        # Every request reaches decode: its prompt tokens over its requests are the mean prompt.
        "decode_prompt_rate": rate("pdserve_prompt_tokens_total", "decode"),
        "worker_cache_hit_rate": rate("pdserve_prefix_cache_hits_total", None),
        "decode_request_rate": rate("pdserve_e2e_request_latency_seconds_count", "decode"),
        "arrival_rate": rate("pdserve_router_requests_total", None),
        "peak_arrival_rate": (
            f"max_over_time(sum(rate(pdserve_router_requests_total{sel.labels(None)}"
            f"[{PEAK_RATE_WINDOW}]))[{PEAK_LOOKBACK}:{PEAK_STEP}])"),
        "router_ttft": _mean(sel, "pdserve_time_to_first_token_seconds", "router"),
        "prefill_ttft": _mean(sel, "pdserve_time_to_first_token_seconds", "prefill"),
        "router_itl": _mean(sel, "pdserve_inter_token_latency_seconds", "router"),
        "decode_itl": _mean(sel, "pdserve_inter_token_latency_seconds", "decode"),
        "prefill_running": f"sum(pdserve_requests_running{sel.labels('prefill')})",
        "prefill_waiting": f"sum(pdserve_requests_waiting{sel.labels('prefill')})",
        "decode_running": f"sum(pdserve_requests_running{sel.labels('decode')})",
        "decode_waiting": f"sum(pdserve_requests_waiting{sel.labels('decode')})",
        "decode_running_max": f"max(pdserve_requests_running{sel.labels('decode')})",
        "decode_kv_sequences": (f"avg(pdserve_requests_running{sel.labels('decode')} / "
                                f"(pdserve_kv_usage_ratio{sel.labels('decode')} "
                                f">= {KV_SEQUENCES_MIN_USAGE}))"),
        "decode_kv_usage": f"avg(pdserve_kv_usage_ratio{sel.labels('decode')})",
    }


def scalar(result: list[dict[str, Any]]) -> float:
    """The value of a one-series instant vector; NaN when empty or not a number."""
    if not result:
        return NAN
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return NAN
    return value if math.isfinite(value) else NAN


def _first_known(*values: float) -> float:
    return next((v for v in values if math.isfinite(v)), NAN)


def _minus(total: float, part: float) -> float:
    if not math.isfinite(total):
        return NAN
    return max(0.0, total - part) if math.isfinite(part) else total


class PrometheusSource:
    """Runs the planner's queries. `query` is injectable for tests of the pure mapping."""

    def __init__(self, url: str, timeout_seconds: int = 10, query: QueryFn | None = None) -> None:
        if query is None:
            # One try per interval: the next interval is the retry, and an outage must not stall
            # the loop in back-offs.
            client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout_seconds,
                                       retry=Retry(total=0))
            query = client.custom_query
        self._query = query

    def _run(self, promql: str) -> float:
        try:
            return scalar(self._query(promql))
        except Exception as exc:  # the client raises many kinds; all mean "no answer"
            raise PrometheusUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def values(self, sel: Selector) -> dict[str, float]:
        """Every input by name (NaN where there is no data); raises PrometheusUnavailable when
        Prometheus does not answer."""
        return {name: self._run(promql) for name, promql in queries(sel).items()}

    def snapshot(self, sel: Selector, now: float) -> MetricsSnapshot:
        """Raises PrometheusUnavailable when Prometheus does not answer."""
        v = self.values(sel)
        prefill = RoleMetrics(
            token_rate=_minus(v["prefill_prompt_rate"], v["prefill_cache_hit_rate"]),
            request_rate=v["prefill_request_rate"],
            latency_seconds=_first_known(v["router_ttft"], v["prefill_ttft"]),
            running=v["prefill_running"], waiting=v["prefill_waiting"])
        decode = RoleMetrics(
            token_rate=v["decode_generation_rate"], request_rate=v["decode_request_rate"],
            latency_seconds=_first_known(v["router_itl"], v["decode_itl"]),
            running=v["decode_running"], waiting=v["decode_waiting"],
            kv_usage=v["decode_kv_usage"], running_max=v["decode_running_max"],
            kv_sequences=v["decode_kv_sequences"])
        return MetricsSnapshot(now, prefill, decode, arrival_rate=v["arrival_rate"],
                               peak_arrival_rate=v["peak_arrival_rate"],
                               class_ttft=self.class_ttft(sel))

    def class_ttft(self, sel: Selector) -> dict[str, float]:
        """Mean TTFT by priority class (NaN for a class without requests in the window)."""
        return {labels[PRIORITY_CLASS]: value
                for labels, value in self.series(class_ttft_query(sel))
                if labels.get(PRIORITY_CLASS)}

    def series(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """Each series of an instant vector: (its labels, its value or NaN); raises
        PrometheusUnavailable when Prometheus does not answer."""
        try:
            result = self._query(promql)
        except Exception as exc:
            raise PrometheusUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return [(dict(found.get("metric") or {}), scalar([found])) for found in result]

    def in_flight_by_pod(self, sel: Selector, role: str) -> dict[str, float]:
        """Running + waiting requests per pod, for pod-deletion-cost."""
        promql = (f"sum by ({POD}) (pdserve_requests_running{sel.labels(role)}) + "
                  f"sum by ({POD}) (pdserve_requests_waiting{sel.labels(role)})")
        return {labels[POD]: value for labels, value in self.series(promql) if labels.get(POD)}
