"""NetworkPolicies around the workers: who may reach their HTTP and KV ports."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from pdserve.api.base import ApiModel, cel
from pdserve.api.model import DNS_LABEL_PATTERN

NamespaceName = Annotated[str, StringConstraints(max_length=63, pattern=DNS_LABEL_PATTERN)]
# Set by the apiserver on every namespace: selects a namespace by name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


class LabelSelectorRequirement(ApiModel):
    """One expression of a label selector (meta/v1 LabelSelectorRequirement)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) "
            ": (!has(self.values) || size(self.values) == 0)",
            "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist"),
    ]})

    key: str = Field(min_length=1, max_length=317, description="The label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key's value is matched against values.",
    )
    values: list[Annotated[str, StringConstraints(max_length=63)]] | None = Field(
        default=None, max_length=64, description="Values for In and NotIn.",
    )

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if (self.operator in ("In", "NotIn")) != bool(self.values):
            raise ValueError("values must be non-empty for In and NotIn, and empty for Exists "
                             "and DoesNotExist")
        return self


class LabelSelector(ApiModel):
    """A meta/v1 LabelSelector: all of it must hold; an empty one selects everything."""

    match_labels: dict[str, str] | None = Field(
        default=None, max_length=32, description="Labels that must have exactly these values.",
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=16, description="Expressions that must all hold.",
    )


class MetricsPeer(ApiModel):
    """Pods that may scrape the workers' /metrics (a NetworkPolicyPeer without ipBlock)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.namespaceSelector) || has(self.podSelector)",
            "a metrics peer needs a namespaceSelector, a podSelector or both"),
    ]})

    namespace_selector: LabelSelector | None = Field(
        default=None,
        description="Namespaces the peer pods run in ({} for every namespace); unset: the "
        "LLMService's own namespace.",
    )
    pod_selector: LabelSelector | None = Field(
        default=None, description="The peer pods in those namespaces; unset: all of them.",
    )

    @model_validator(mode="after")
    def _selects_something(self) -> MetricsPeer:
        if self.namespace_selector is None and self.pod_selector is None:
            raise ValueError("a metrics peer needs a namespaceSelector, a podSelector or both")
        return self


def _prometheus_in_monitoring() -> list[MetricsPeer]:
    """Where kube-prometheus runs Prometheus, with the pod label the Prometheus Operator and
    the prometheus-community charts give it."""
    return [MetricsPeer(
        namespace_selector=LabelSelector(match_labels={NAMESPACE_NAME_LABEL: "monitoring"}),
        pod_selector=LabelSelector(match_labels={"app.kubernetes.io/name": "prometheus"}),
    )]


class NetworkPolicySpec(ApiModel):
    """Traffic rules around the workers."""

    enabled: bool = Field(
        default=True,
        description="Render NetworkPolicies: only routers and the metrics peers (metricsPeers, "
        "metricsNamespaces) reach workers' HTTP port and only prefill pods reach decode pods' "
        "KV port. Enforced only by a network plugin that implements NetworkPolicy.",
    )
    metrics_peers: list[MetricsPeer] = Field(
        default_factory=_prometheus_in_monitoring, max_length=8,
        description="Pods that may also reach the workers' HTTP port, for Prometheus scraping "
        "of /metrics. Default: pods labelled app.kubernetes.io/name=prometheus in namespace "
        "monitoring; [] admits none.",
    )
    metrics_namespaces: list[NamespaceName] = Field(
        default_factory=list, max_length=16,
        description="Namespaces (by name) all of whose pods may also reach the workers' HTTP "
        "port.",
    )
