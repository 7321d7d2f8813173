"""What the tests that run real pods need: where such pods may run, and the project's image in
that node's containerd.

On the local cluster that is its one real node (a taint keeps everything else on the KWOK
pools); on a cluster named by KUBECONFIG (kind) every node runs containers and the image is
loaded the cluster's own way (`kind load image-archive`), so no placement is added."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from e2e.cluster.node import identity


@dataclass(frozen=True)
class Placement:
    """Node selector and tolerations that put a pod where containers really run."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def real_node(cls) -> Placement:
        return cls(identity.node_selector(), identity.tolerations())

    def apply(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A copy of `spec` placed here: a core/v1 PodSpec, or an LLMService role (prefill,
        decode, router), which spell nodeSelector and tolerations the same way."""
        placed = copy.deepcopy(spec)
        if self.node_selector:
            placed["nodeSelector"] = {**placed.get("nodeSelector", {}), **self.node_selector}
        if self.tolerations:
            placed["tolerations"] = [*placed.get("tolerations", []), *self.tolerations]
        return placed

    def helm_values(self) -> dict[str, Any]:
        """The chart's operator placement values."""
        return {"operator": {"nodeSelector": self.node_selector,
                             "tolerations": self.tolerations}}
