"""The label contract between scrape configurations and the planner's PromQL.

Every series scraped from a router or worker pod carries these labels, each copied by the scrape
configuration's relabeling from the Kubernetes service-discovery meta label it is listed with.
The chart's PodMonitor and manifests/prometheus/scrape-config.yaml give exactly these
(tests/test_scrape_labels.py checks), and the e2e tests label their local processes the same
way; the planner's queries and the chart's Grafana dashboard select by nothing else. The
operator's own planner and condition series name the LLMService they describe the same way.
"""

from __future__ import annotations

import re

from pdserve.controller.names import LABEL_ROLE, LABEL_SERVICE

NAMESPACE = "namespace"
LLMSERVICE = "llmservice"
ROLE = "role"
POD = "pod"


def pod_label_meta(pod_label: str) -> str:
    """Prometheus's meta label for a pod label: every character outside [a-zA-Z0-9_] is `_`."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)


# Label -> the meta label of Prometheus's Kubernetes pod discovery it is copied from.
SOURCES: dict[str, str] = {
    NAMESPACE: "__meta_kubernetes_namespace",
    POD: "__meta_kubernetes_pod_name",
    LLMSERVICE: pod_label_meta(LABEL_SERVICE),
    ROLE: pod_label_meta(LABEL_ROLE),
}
