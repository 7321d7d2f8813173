"""The planner's capacity prior counts a pod of N chips as one tensor-parallel replica: more
than one chip sustains, less than N pods of one chip would (all-reduces over the link)."""

from __future__ import annotations

import pytest

from pdserve.api import LLMServiceSpec
from pdserve.api.accelerators import ACCELERATORS
from pdserve.autoscaler.priors import (
    CPU_PRIOR,
    DECODE_BATCH,
    REFERENCE_SHAPE,
    capacity_prior,
    tensor_parallel_efficiency,
)
from pdserve.controller.planner_inputs import planner_config
from pdserve.planning.catalog import default_catalog
from pdserve.planning.perf import replica_perf

KINDS = sorted(kind for kind, facts in ACCELERATORS.items() if facts.family != "cpu")


@pytest.mark.parametrize("kind", KINDS)
def test_a_tensor_parallel_pod_is_less_than_n_pods_and_more_than_one(kind):
    one = capacity_prior(kind, 1, 1)
    last = (1.0, 1.0)
    for chips in (2, 4, 8):
        pod = capacity_prior(kind, chips, chips)
        assert one.prefill_tokens_per_second < pod.prefill_tokens_per_second \
            < chips * one.prefill_tokens_per_second
        assert one.decode_tokens_per_second < pod.decode_tokens_per_second \
            < chips * one.decode_tokens_per_second
        efficiency = tensor_parallel_efficiency(kind, chips)
        assert all(0 < now < before for now, before in zip(efficiency, last, strict=True))
        last = efficiency


def test_a_slower_link_costs_more_efficiency():
    h100 = default_catalog()["nvidia-h100"]
    over_pcie = h100.model_copy(update={"link_gb_per_s": 32.0})
    nvlink, pcie = (replica_perf(kind, REFERENCE_SHAPE, "bfloat16", 4).decode_step_seconds(
        DECODE_BATCH, DECODE_BATCH * 1500) for kind in (h100, over_pcie))
    assert nvlink < pcie


def test_cpu_pods_keep_the_measured_prior():
    assert capacity_prior("cpu", 1, 1) == CPU_PRIOR


def test_a_replica_over_nodes_counts_its_chips_at_the_network_speed():
    one_node = tensor_parallel_efficiency("nvidia-h100", 8)
    two_nodes = tensor_parallel_efficiency("nvidia-h100", 16, nodes=2)
    # 16 chips all-reducing over the network keep less of their sum than 8 over NVLink.
    assert 0 < two_nodes[0] < one_node[0] and 0 < two_nodes[1] < one_node[1]


def test_the_budget_counts_every_chip_of_a_replica_over_nodes():
    spec = LLMServiceSpec.model_validate({
        "model": {"source": {"builtin": "tiny"}},
        "decode": {"accelerator": {"kind": "nvidia-h100", "count": 8, "nodes": 2}},
        "autoscaling": {"enabled": True, "prometheusUrl": "http://p:9090",
                        "acceleratorBudget": 40}})
    assert planner_config(spec).decode.accelerators_per_replica == 16
    with pytest.raises(ValueError, match="below the 17 accelerators"):
        LLMServiceSpec.model_validate({**spec.model_dump(by_alias=True, exclude_none=True),
                                       "autoscaling": {"enabled": True,
                                                       "prometheusUrl": "http://p:9090",
                                                       "acceleratorBudget": 16}})
