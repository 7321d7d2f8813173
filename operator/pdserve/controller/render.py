"""Pure rendering of an LLMService's children: spec in, manifests out (jinja2 templates)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import jinja2
import yaml

from pdserve.api.spec import LLMServiceSpec
from pdserve.controller.context import (
    Owner,
    desired_replicas,
    router_context,
    service_context,
    worker_context,
    workload_template,
)

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("pdserve.controller", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
    keep_trailing_newline=True,
)


def _documents(template: str, context: dict[str, Any]) -> list[dict[str, Any]]:
    text = _TEMPLATES.get_template(template).render(**context)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_children(spec: LLMServiceSpec, owner: Owner, image: str,
                    decided: dict[str, Any] | None = None,
                    planner_scaled: Collection[str] = ()) -> list[dict[str, Any]]:
    """Every child object of one LLMService, in apply order (config before its users).

    `decided` is status.autoscaling: the planner's replica decision, rendered while
    autoscaling is on until the planner has scaled a role itself. The roles in
    `planner_scaled` get no `replicas` at all: the planner, through the scale subresource, is
    then their one writer.
    """
    shared = service_context(spec, owner)
    children = _documents("engine-configmap.yaml.j2", shared)
    children += _documents("services.yaml.j2", shared)
    for role in ("prefill", "decode"):
        replicas = None if role in planner_scaled else desired_replicas(spec, role, decided)
        children += _documents(workload_template(spec, role),
                               worker_context(spec, owner, role, image, replicas))
    children += _documents("router-deployment.yaml.j2", router_context(spec, owner, image))
    children += _documents("pdbs.yaml.j2", shared)
    if spec.network_policy.enabled:
        children += _documents("networkpolicies.yaml.j2", shared)
    return children
