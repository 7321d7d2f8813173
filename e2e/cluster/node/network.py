"""The real node's network namespace and its one link to the host.

Everything the node does to networking (the pod bridge, kube-proxy's iptables rules, IP
forwarding) happens inside its namespace, so the host's own tables and sysctls stay as they
were; the host reaches pods and Services through two routes over the link."""

from __future__ import annotations

import subprocess
from pathlib import Path

from e2e.cluster.components import SERVICE_CIDR
from e2e.cluster.node import identity

NETNS_PATH = Path("/run/netns") / identity.NETNS


class NodeNetworkError(RuntimeError):
    pass


def _ip(*args: str, netns: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = ["ip", *(["-n", identity.NETNS] if netns else []), *args]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeNetworkError(f"`{' '.join(command)}` failed: {proc.stderr.strip()}")
    return proc


def exists() -> bool:
    return NETNS_PATH.exists()


def create() -> None:
    """The namespace, the veth link with an address at each end, and the routes."""
    prefix = identity.LINK_PREFIX_LEN
    _ip("netns", "add", identity.NETNS)
    _ip("link", "add", identity.HOST_LINK, "type", "veth", "peer", "name", identity.NODE_LINK)
    _ip("link", "set", identity.NODE_LINK, "netns", identity.NETNS)
    _ip("addr", "add", f"{identity.HOST_IP}/{prefix}", "dev", identity.HOST_LINK)
    _ip("link", "set", identity.HOST_LINK, "up")
    _ip("addr", "add", f"{identity.NODE_IP}/{prefix}", "dev", identity.NODE_LINK, netns=True)
    _ip("link", "set", identity.NODE_LINK, "up", netns=True)
    _ip("link", "set", "lo", "up", netns=True)
    _ip("route", "add", "default", "via", identity.HOST_IP, netns=True)
    for cidr in (identity.POD_SUBNET, SERVICE_CIDR):
        _ip("route", "add", cidr, "via", identity.NODE_IP, "dev", identity.HOST_LINK)
    # Pods reach Services on other pods of this node through the bridge: the node forwards.
    subprocess.run(
        ["ip", "netns", "exec", identity.NETNS, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
        capture_output=True, check=True,
    )


def delete() -> None:
    """Removes the namespace (its bridge and veth end go with it, and with them the routes)."""
    if exists():
        _ip("netns", "delete", identity.NETNS, check=False)
    _ip("link", "delete", identity.HOST_LINK, check=False)
