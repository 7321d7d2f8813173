"""The chart's Grafana dashboard queries only series pdserve exports, by the contract labels."""

from __future__ import annotations

import re

import pytest
from promql_names import exported_series, names

from e2e import grafana_dashboard
from pdserve.autoscaler.scrape_labels import LLMSERVICE, NAMESPACE, SOURCES

pytestmark = pytest.mark.timeout(30)
QUERIES = grafana_dashboard.panel_queries()
# What the dashboard's variables stand for when a query runs outside Grafana.
VALUES = {NAMESPACE: "team-a", LLMSERVICE: "chat", "__rate_interval": "1m"}
FUNCTIONS = {"sum", "max", "rate", "increase", "histogram_quantile"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+), (?P<label>\w+)\)$")


def ids(query: grafana_dashboard.PanelQuery) -> str:
    return f"{query.panel} {query.ref_id}"


@pytest.mark.parametrize("query", QUERIES, ids=ids)
def test_query_uses_exported_series_and_contract_labels(
        query: grafana_dashboard.PanelQuery) -> None:
    series = exported_series()
    found = names(query.expr)
    assert found.selectors and found.functions <= FUNCTIONS, found
    for selector in found.selectors:
        assert selector.metric in series, f"{selector.metric} is not exported"
        assert selector.labels() <= set(SOURCES) | series[selector.metric], selector
        # Every series of one LLMService, as the dashboard's variables choose it.
        assert {(NAMESPACE, "=", "$namespace"), (LLMSERVICE, "=", "$llmservice")} <= set(
            selector.matchers), selector
    exported_labels = set().union(*(series[s.metric] for s in found.selectors))
    assert found.grouping <= set(SOURCES) | exported_labels, found.grouping
    # Legends name only labels the aggregated result keeps.
    assert set(re.findall(r"\{\{(\w+)\}\}", query.legend)) <= found.grouping, query.legend


def test_panels_cover_latency_throughput_kv_and_the_planner() -> None:
    used = {s.metric for query in QUERIES for s in names(query.expr).selectors}
    assert {
        "pdserve_time_to_first_token_seconds_bucket",
        "pdserve_inter_token_latency_seconds_bucket",
        "pdserve_prompt_tokens_total",
        "pdserve_generation_tokens_total",
        "pdserve_kv_usage_ratio",
        "pdserve_prefix_cache_hits_total",
        "pdserve_kv_transfer_bytes_total",
        "pdserve_operator_planner_decisions_total",
        "pdserve_operator_planner_replicas",
    } <= used


def test_panels_read_the_chosen_prometheus() -> None:
    dashboard = grafana_dashboard.load()
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    every = [*dashboard["panels"],
             *(nested for row in dashboard["panels"] for nested in row.get("panels", []))]
    assert len({panel["id"] for panel in every}) == len(every), "panel ids repeat"
    for panel in grafana_dashboard.panels(dashboard):
        assert panel["datasource"] == datasource, panel["title"]
        assert all(target["datasource"] == datasource for target in panel["targets"])
    assert grafana_dashboard.variables(dashboard)["datasource"]["query"] == "prometheus"


def test_variables_list_llmservices_by_the_contract_labels() -> None:
    variables = grafana_dashboard.variables()
    series = exported_series()
    for name in (NAMESPACE, LLMSERVICE):
        match = LABEL_VALUES.match(variables[name]["query"])
        assert match is not None and match["label"] == name, variables[name]["query"]
        for selector in names(match["selector"]).selectors:
            assert selector.metric in series and selector.labels() <= set(SOURCES)
    assert "$namespace" in variables[LLMSERVICE]["query"]


def test_queries_become_plain_promql() -> None:
    for query in QUERIES:
        assert "$" not in grafana_dashboard.concrete(query.expr, VALUES)
    with pytest.raises(KeyError, match="namespace"):
        grafana_dashboard.concrete(QUERIES[0].expr, {})
