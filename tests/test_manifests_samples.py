"""The samples of manifests/samples validate against the API models and fit the local pools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pdserve.api import LLMService
from pdserve.api.accelerators import accelerator_facts
from pdserve.api.roles import RoleSpec

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
NODE_POOLS = ROOT / "e2e" / "cluster" / "nodepools.yaml"


def load(name: str) -> LLMService:
    path = ROOT / "manifests" / "samples" / name
    return LLMService.model_validate(yaml.safe_load(path.read_text()))


@pytest.mark.timeout(10)
def test_the_three_samples_exist() -> None:
    assert [path.name for path in SAMPLES] == [
        "agentic-chat.yaml",
        "story-generation-gpu.yaml",
        "summarization-tpu.yaml",
    ]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: path.stem)
@pytest.mark.timeout(10)
def test_sample_validates(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert len(documents) == 1
    service = LLMService.model_validate(documents[0])
    assert "namespace" not in service.metadata, "samples go to the namespace of kubectl"
    source = service.spec.model.source
    offline = source.builtin == "tiny" or (source.uri is not None and "example" in source.uri)
    assert offline, "samples must not download a real model"


@pytest.mark.timeout(10)
def test_summarization_prefills_on_a_tpu_v5e_slice() -> None:
    spec = load("summarization-tpu.yaml").spec
    assert spec.profile == "input-heavy"
    assert (spec.prefill.accelerator.kind, spec.prefill.accelerator.topology) == ("tpu-v5e", "2x2")


@pytest.mark.timeout(10)
def test_story_generation_runs_on_h100s() -> None:
    spec = load("story-generation-gpu.yaml").spec
    assert spec.profile == "output-heavy"
    assert spec.prefill.accelerator.kind == spec.decode.accelerator.kind == "nvidia-h100"
    assert (spec.decode.replicas or 0) > (spec.prefill.replicas or 0)


@pytest.mark.timeout(10)
def test_agentic_chat_caches_prefixes() -> None:
    spec = load("agentic-chat.yaml").spec
    assert spec.profile == "agentic"
    assert spec.prefill.engine.enable_prefix_caching and spec.decode.engine.enable_prefix_caching
    assert spec.router.routing_policy == "prefix-affinity"


def pool_capacity() -> dict[str, list[int]]:
    """Accelerator resource name -> per-node counts, from the local cluster's node pools."""
    pools: list[dict[str, Any]] = yaml.safe_load(NODE_POOLS.read_text())["pools"]
    capacity: dict[str, list[int]] = {}
    for pool in pools:
        for resource, amount in pool.get("resources", {}).items():
            capacity.setdefault(resource, []).extend([int(amount)] * pool["count"])
    return capacity


@pytest.mark.timeout(10)
def test_all_samples_fit_the_local_cluster_together() -> None:
    # The e2e tests and `make demo` run every sample at once and expect them all Ready.
    free = pool_capacity()
    for path in SAMPLES:
        spec = LLMService.model_validate(yaml.safe_load(path.read_text())).spec
        roles: list[RoleSpec] = [spec.prefill, spec.decode]
        for role in roles:
            facts = accelerator_facts(role.accelerator.kind)
            if facts.resource_name is None:
                continue
            assert role.replicas is not None, f"{path.name}: samples set replicas explicitly"
            for _ in range(role.replicas):
                nodes = free[facts.resource_name]
                fits = [i for i, left in enumerate(nodes) if left >= role.accelerator.count]
                need = f"{role.accelerator.count} {facts.resource_name}"
                assert fits, f"{path.name}: no node left with {need}"
                nodes[fits[0]] -= role.accelerator.count
