"""What PromQL names, and what pdserve exports: enough to check queries against real series.

`names` is a lexer, not a parser: it finds the metric selectors (with their label matchers), the
labels of groupings (by, without, on, ignoring, group_left/right) and the functions of an
expression. `exported_series` is every series name pdserve's workers, routers and operator
expose, with the labels each carries, taken from their own registries."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.metrics import MetricWrapperBase

from pdserve.controller import metrics as operator_metrics
from pdserve.controller import planner_metrics
from pdserve.router.metrics import PREFILL_DECODE, RouterMetrics
from pdserve.runtime.serving.metrics import WorkerMetrics

_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])\b)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){},])
  | (?P<space>\s+)
""", re.VERBOSE)
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)

    def labels(self) -> set[str]:
        return {label for label, _, _ in self.matchers}


@dataclass
class Names:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)

    def labels(self) -> set[str]:
        """Every label the expression selects or groups by."""
        return self.grouping.union(*(selector.labels() for selector in self.selectors))


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens, at = [], 0
    while at < len(expr):
        match = _TOKEN.match(expr, at)
        if match is None:
            raise ValueError(f"cannot read {expr[at:]!r} in {expr!r}")
        assert match.lastgroup is not None
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
        at = match.end()
    return tokens


def names(expr: str) -> Names:
    tokens = _tokens(expr)
    found = Names()
    at = 0

    def text(index: int) -> str:
        return tokens[index][1] if index < len(tokens) else ""

    while at < len(tokens):
        kind, word = tokens[at]
        if kind == "op" and word == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        if kind != "ident":
            at += 1
            continue
        if word in _LABEL_LISTS:
            if text(at + 1) == "(":
                at += 2
                while text(at) != ")":
                    if text(at) != ",":
                        found.grouping.add(text(at))
                    at += 1
            at += 1
        elif word.lower() in _KEYWORDS:
            at += 1
        elif text(at + 1) == "(" or text(at + 1) in ("by", "without"):  # sum by (x) (...)
            found.functions.add(word)
            at += 1
        else:
            matchers: list[tuple[str, str, str]] = []
            at += 1
            if text(at) == "{":
                at += 1
                while text(at) != "}":
                    label, operator, value = text(at), text(at + 1), text(at + 2)[1:-1]
                    matchers.append((label, operator, value))
                    at += 4 if text(at + 3) == "," else 3
                at += 1
            found.selectors.append(Selector(word, tuple(matchers)))
    return found


class _EngineStats(SimpleNamespace):
    num_waiting = num_running = num_free_blocks = num_blocks = prefix_queries = prefix_hits = 0
    kv_tokens_pruned = kv_bytes_saved = 0
    kv_usage = 0.0


def _add(series: dict[str, set[str]], families: list[Metric]) -> None:
    for family in families:
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)


def exported_series() -> dict[str, set[str]]:
    """Series name -> label names, for everything a worker, a router and the operator expose
    (`up` too, which Prometheus records for every target)."""
    series: dict[str, set[str]] = {"up": set()}
    worker = WorkerMetrics("decode", "model", _EngineStats)
    worker.count_request("stop")  # labelled children exist once used
    router = RouterMetrics("model")
    for observe in (router.observe_ttft, router.observe_itl, router.observe_e2e):
        observe(0.1)
    router.requests.labels("prefill", "ok").inc()
    router.count_disaggregation(PREFILL_DECODE)
    for registry in (worker.registry, router.registry):
        assert isinstance(registry, CollectorRegistry)
        _add(series, list(registry.collect()))
    # The operator's metrics live in the process-wide registry and have no children until a
    # reconcile or planner run; their label names come from their declarations.
    for module in (operator_metrics, planner_metrics):
        for metric in vars(module).values():
            if isinstance(metric, MetricWrapperBase):
                labels = set(metric._labelnames)
                for family in metric.describe():
                    suffixes = {"counter": ("_total",), "gauge": ("",),
                                "histogram": ("_bucket", "_sum", "_count")}[family.type]
                    for suffix in suffixes:
                        extra = {"le"} if suffix == "_bucket" else set()
                        series.setdefault(family.name + suffix, set()).update(labels | extra)
    return series
