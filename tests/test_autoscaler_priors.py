"""The planner's capacity prior counts a pod of N chips as one tensor-parallel replica: more
than one chip sustains, less than N pods of one chip would (all-reduces over the link)."""

from __future__ import annotations

import pytest

from pdserve.api.accelerators import ACCELERATORS
from pdserve.autoscaler.priors import CPU_PRIOR, capacity_prior, tensor_parallel_efficiency

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
    nvlink, pcie = (tensor_parallel_efficiency(kind, 4)[0] for kind in ("nvidia-h100",
                                                                          "nvidia-l4"))
    assert pcie < nvlink  # L4s talk over PCIe


def test_cpu_pods_keep_the_measured_prior():
    assert capacity_prior("cpu", 1, 1) == CPU_PRIOR
