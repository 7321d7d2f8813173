"""Who and where the real node is: its name, addresses, and how workloads opt into it.

The node lives in its own network namespace, joined to the host by one veth link; the host's
end of that link is where the node and its pods reach the apiserver."""

from __future__ import annotations

NODE_NAME = "pdserve-node"
NETNS = "pdserve-node"
HOST_LINK = "pdsn-host"
NODE_LINK = "pdsn-node"
HOST_IP = "10.250.0.1"
NODE_IP = "10.250.0.2"
LINK_PREFIX_LEN = 30
# Pod addresses of the real node; distinct from the fake addresses KWOK hands out (10.244/16).
POD_SUBNET = "10.245.0.0/24"
# Inside the control plane's service range (components.SERVICE_CIDR).
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"

# Pods run on the real node only when they ask: the KWOK pools keep every other workload, and
# a test or the demo adds this selector and toleration to what must really run.
LABEL = ("pdserve.dev/real-node", "true")
TAINT = {"key": "pdserve.dev/real-node", "value": "true", "effect": "NoSchedule"}
# The pools' own label, so CPU-pool rules (e.g. a nodeSelector on pdserve.dev/pool) hold too.
POOL_LABEL = ("pdserve.dev/pool", "cpu")


def node_selector() -> dict[str, str]:
    return {LABEL[0]: LABEL[1]}


def tolerations() -> list[dict[str, str]]:
    return [{"key": TAINT["key"], "operator": "Equal", "value": TAINT["value"],
             "effect": TAINT["effect"]}]
