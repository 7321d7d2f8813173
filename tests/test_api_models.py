"""The pydantic models: defaults, aliases, and the cross-field rules mirrored from the CRD."""

import pytest
from pydantic import ValidationError

from pdserve.api import LLMService, LLMServiceSpec
from pdserve.api.accelerators import ACCELERATORS, AcceleratorKind
from pdserve.api.profiles import PROFILES
from pdserve.api.resolve import engine_settings, initial_replicas, served_model_name

MINIMAL = {"model": {"source": {"builtin": "tiny"}}}


def _spec(**overrides) -> dict:
    spec = {"model": {"source": {"builtin": "tiny"}}}
    spec.update(overrides)
    return spec


def test_minimal_spec_gets_defaults():
    spec = LLMServiceSpec.model_validate(MINIMAL)
    assert spec.profile == "balanced"
    assert spec.prefill.accelerator.kind == "cpu" and spec.prefill.accelerator.count == 1
    assert spec.kv_transfer.port == 9000 and spec.kv_transfer.transport is None
    assert spec.kv_transport() == "tcp"  # CPU pools
    assert spec.router.routing_policy == "prefix-affinity"
    assert not spec.autoscaling.enabled
    assert spec.to_k8s()["kvTransfer"]["fallback"] == "recompute"


@pytest.mark.parametrize(("prefill", "decode", "transport"), [
    ({"kind": "nvidia-h100"}, {"kind": "nvidia-l4"}, "nixl"),  # one GPU a replica each side
    ({"kind": "nvidia-h100", "count": 2}, {"kind": "nvidia-h100"}, "tcp"),  # sharded KV
    ({"kind": "tpu-v5e", "count": 1, "topology": "1x1"}, {"kind": "nvidia-h100"}, "tcp"),
    ({"kind": "cpu"}, {"kind": "cpu"}, "tcp"),  # between CPU pods UCX runs over TCP: slower
])
def test_the_kv_transport_defaults_by_pool(prefill, decode, transport):
    spec = LLMServiceSpec.model_validate(_spec(prefill={"accelerator": prefill},
                                               decode={"accelerator": decode}))
    assert spec.kv_transport() == transport


def test_a_chosen_kv_transport_wins_where_it_can_work():
    spec = LLMServiceSpec.model_validate(_spec(kvTransfer={"transport": "nixl"}))
    assert spec.kv_transport() == "nixl"  # CPU pools may ask for it


def test_whole_object_round_trips_with_camel_case():
    obj = {"apiVersion": "pdserve.dev/v1alpha1", "kind": "LLMService",
           "metadata": {"name": "chat"},
           "spec": _spec(prefill={"accelerator": {"kind": "tpu-v5e", "count": 4,
                                                  "topology": "2x2"},
                                  "engine": {"maxNumBatchedTokens": 4096}})}
    service = LLMService.model_validate(obj)
    assert service.spec.prefill.engine.max_num_batched_tokens == 4096
    assert service.to_k8s()["spec"]["prefill"]["accelerator"]["topology"] == "2x2"


INVALID = {
    "unknown field": (_spec(replicaz=3), "replicaz"),
    "two model sources": ({"model": {"source": {"builtin": "tiny", "path": "/m"}}},
                          "exactly one model source"),
    "no model source": ({"model": {"source": {}}}, "exactly one model source"),
    "bad uri scheme": ({"model": {"source": {"uri": "ftp://x/y"}}}, "pattern"),
    "negative replicas": (_spec(decode={"replicas": -1}), "greater than or equal to 0"),
    "zero accelerators": (_spec(prefill={"accelerator": {"kind": "nvidia-l4", "count": 0}}),
                          "greater than or equal to 1"),
    "topology on gpu": (_spec(prefill={"accelerator": {"kind": "nvidia-h100",
                                                       "topology": "2x2"}}),
                        "topology applies only to TPU"),
    "tpu without topology": (_spec(prefill={"accelerator": {"kind": "tpu-v6e"}}),
                             "need a topology"),
    "tpu count off topology": (_spec(prefill={"accelerator": {"kind": "tpu-v5e", "count": 2,
                                                              "topology": "2x2"}}),
                               "count must equal the chips"),
    "unknown accelerator": (_spec(decode={"accelerator": {"kind": "nvidia-b200"}}), "kind"),
    "min above max": (_spec(autoscaling={"prefill": {"minReplicas": 5, "maxReplicas": 2}}),
                      "minReplicas must not exceed maxReplicas"),
    "autoscaling without prometheus": (_spec(autoscaling={"enabled": True}), "prometheusUrl"),
    "budget below minimums": (_spec(
        prefill={"accelerator": {"kind": "nvidia-h100", "count": 2}},
        decode={"accelerator": {"kind": "nvidia-h100", "count": 2}},
        autoscaling={"acceleratorBudget": 3}), "acceleratorBudget 3 is below the 4"),
    "cuda-ipc is no transport": (_spec(kvTransfer={"transport": "cuda-ipc"}), "'tcp'"),
    "nixl on a tpu pool": (_spec(kvTransfer={"transport": "nixl"}, prefill={"accelerator": {
        "kind": "tpu-v5e", "count": 1, "topology": "1x1"}}), "nixl needs prefill and decode"),
    "nixl with a tensor-parallel role": (_spec(kvTransfer={"transport": "nixl"}, decode={
        "accelerator": {"kind": "nvidia-h100", "count": 2}}), "one device per replica"),
    "kv port is the http port": (_spec(kvTransfer={"port": 8000}), "HTTP port"),
    "kv port out of range": (_spec(kvTransfer={"port": 70000}), "less than or equal to 65535"),
    "chunk above step budget": (_spec(decode={"engine": {"chunkSize": 4096,
                                                         "maxNumBatchedTokens": 1024}}),
                                "chunkSize must not exceed"),
    "bad profile": (_spec(profile="heavy"), "profile"),
    "snapkv without a budget": (_spec(prefill={"engine": {"kvCompression": {
        "method": "snapkv"}}}), "snapkv needs exactly one of ratio and budgetTokens"),
    "snapkv ratio of one": (_spec(prefill={"engine": {"kvCompression": {
        "method": "snapkv", "ratio": 1.0}}}), "less than 1"),
    "budget inside the window": (_spec(prefill={"engine": {"kvCompression": {
        "method": "snapkv", "budgetTokens": 16, "windowTokens": 64}}}),
        "budgetTokens must exceed windowTokens"),
    "ratio on streaming": (_spec(decode={"engine": {"kvCompression": {
        "method": "streaming", "ratio": 0.5}}}), "apply only to method snapkv"),
    "sinks on snapkv": (_spec(decode={"engine": {"kvCompression": {
        "method": "snapkv", "ratio": 0.5, "sinkTokens": 4}}}),
        "sinkTokens applies only to method streaming"),
    "window with none": (_spec(decode={"engine": {"kvCompression": {"windowTokens": 8}}}),
                         "windowTokens needs method snapkv or streaming"),
    "unknown method": (_spec(decode={"engine": {"kvCompression": {"method": "h2o"}}}),
                       "method"),
    "gpu in resources": (_spec(decode={"resources": {"limits": {"nvidia.com/gpu": 1}}}),
                         "not in resources.limits"),
    "metrics peer selecting nothing": (_spec(networkPolicy={"metricsPeers": [{}]}),
                                       "needs a namespaceSelector, a podSelector or both"),
    "In without values": (_spec(networkPolicy={"metricsPeers": [{"podSelector": {
        "matchExpressions": [{"key": "app", "operator": "In"}]}}]}),
        "values must be non-empty for In"),
    "Exists with values": (_spec(networkPolicy={"metricsPeers": [{"namespaceSelector": {
        "matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]}}]}),
        "empty for Exists"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_specs_are_rejected_with_a_clear_message(case):
    data, fragment = INVALID[case]
    with pytest.raises(ValidationError) as err:
        LLMServiceSpec.model_validate(data)
    assert fragment in str(err.value)


def test_accelerator_table_covers_every_kind():
    assert set(ACCELERATORS) == set(AcceleratorKind.__args__)
    assert ACCELERATORS["nvidia-h100"].resource_name == "nvidia.com/gpu"
    assert ACCELERATORS["nvidia-h100"].node_labels == {
        "cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert ACCELERATORS["tpu-v5e"].node_labels == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice"}
    assert ACCELERATORS["tpu-v6e"].resource_name == "google.com/tpu"
    assert ACCELERATORS["cpu"].resource_name is None
    assert ACCELERATORS["nvidia-h200"].memory_bandwidth_bytes_per_s == pytest.approx(4.8e12)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profiles_set_split_and_engine_defaults(profile):
    spec = LLMServiceSpec.model_validate(_spec(profile=profile))
    assert initial_replicas(spec, "prefill") == PROFILES[profile].prefill_replicas
    assert initial_replicas(spec, "decode") == PROFILES[profile].decode_replicas
    settings = engine_settings(spec, "decode")
    assert settings.max_num_seqs == PROFILES[profile].decode.max_num_seqs
    assert settings.chunk_size <= settings.max_num_batched_tokens


def test_explicit_values_beat_the_profile():
    spec = LLMServiceSpec.model_validate(_spec(
        profile="output-heavy", decode={"replicas": 0, "engine": {"maxNumSeqs": 7,
                                                                  "enablePrefixCaching": False}}))
    assert initial_replicas(spec, "decode") == 0
    settings = engine_settings(spec, "decode")
    assert settings.max_num_seqs == 7 and settings.enable_prefix_caching is False


def test_autoscaling_clamps_the_initial_split():
    spec = LLMServiceSpec.model_validate(_spec(
        profile="output-heavy", autoscaling={"enabled": True, "prometheusUrl": "http://p:9090",
                                             "decode": {"minReplicas": 1, "maxReplicas": 2}}))
    assert initial_replicas(spec, "decode") == 2


def test_served_name_defaults_to_the_service_name():
    assert served_model_name(LLMServiceSpec.model_validate(MINIMAL), "chat") == "chat"
    named = LLMServiceSpec.model_validate({"model": {"servedName": "qwen",
                                                     "source": {"builtin": "tiny"}}})
    assert served_model_name(named, "chat") == "qwen"
