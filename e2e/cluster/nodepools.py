"""Node pools simulated by KWOK: the config (YAML) and the Node objects it yields."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_CONFIG = Path(__file__).with_name("nodepools.yaml")
# KWOK manages only the nodes carrying this annotation (see `kwok
# --manage-nodes-with-annotation-selector`); `type=kwok` lets tests select them.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
KWOK_LABEL = ("type", "kwok")


class Taint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    value: str = ""
    effect: str = Field(pattern="^(NoSchedule|PreferNoSchedule|NoExecute)$")


class NodePool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    count: int = Field(ge=0, le=1000)
    cpu: str = "16"
    memory: str = "64Gi"
    pods: str = "110"
    resources: dict[str, str] = {}
    labels: dict[str, str] = {}
    taints: list[Taint] = []


class NodePools(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pools: list[NodePool]


class NodePoolConfigError(ValueError):
    pass


class NodePoolApplyError(RuntimeError):
    pass


def load(path: Path | None = None) -> NodePools:
    """Reads the pools config: `path`, else $PDSERVE_NODE_POOLS, else the default file."""
    source = path or Path(os.environ.get("PDSERVE_NODE_POOLS") or DEFAULT_CONFIG)
    try:
        raw = yaml.safe_load(source.read_text())
        return NodePools.model_validate(raw)
    except OSError as err:
        raise NodePoolConfigError(f"cannot read node pools config {source}: {err}") from err
    except (yaml.YAMLError, ValidationError) as err:
        raise NodePoolConfigError(f"invalid node pools config {source}:\n{err}") from err


def node_manifests(pools: NodePools) -> list[dict[str, Any]]:
    """One v1 Node per pool member, ready for `kubectl apply`; KWOK fills in the status
    conditions and heartbeats, keeping the capacity given here."""
    nodes = []
    for pool in pools.pools:
        capacity = {"cpu": pool.cpu, "memory": pool.memory, "pods": pool.pods, **pool.resources}
        for index in range(pool.count):
            name = f"{pool.name}-{index}"
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "pdserve.dev/node-pool": pool.name,
                KWOK_LABEL[0]: KWOK_LABEL[1],
                **pool.labels,
            }
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": {
                            KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1],
                            "node.alpha.kubernetes.io/ttl": "0",
                        },
                    },
                    "spec": {"taints": [t.model_dump() for t in pool.taints]},
                    "status": {"capacity": capacity, "allocatable": dict(capacity)},
                }
            )
    return nodes


def apply_nodes(kubectl: str, kubeconfig: str, pools: NodePools) -> list[str]:
    """Creates (or updates) the pools' nodes with client-side `kubectl apply`: a create keeps
    the capacity in the given status, which server-side apply would drop."""
    nodes = node_manifests(pools)
    proc = subprocess.run(
        [kubectl, "--kubeconfig", kubeconfig, "apply", "-f", "-"],
        input=yaml.safe_dump_all(nodes),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise NodePoolApplyError(f"applying the KWOK nodes failed: {proc.stderr.strip()}")
    return [n["metadata"]["name"] for n in nodes]
