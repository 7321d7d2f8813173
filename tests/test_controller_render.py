"""Rendering of an LLMService's children: pure, checked object by object."""

import json

import pytest

from pdserve.api import LLMServiceSpec
from pdserve.controller.context import Owner
from pdserve.controller.render import render_children

OWNER = Owner("chat", "team-a", "0b8f-uid")
IMAGE = "registry.example/pdserve:1.2.3"

GPU_POOL = {"model": {"servedName": "story-model", "source": {"pvc": {"claimName": "weights",
                                                                      "path": "llama"}}},
            "profile": "output-heavy",
            "prefill": {"accelerator": {"kind": "nvidia-h100", "count": 2}},
            "decode": {"accelerator": {"kind": "nvidia-h100"},
                       "nodeSelector": {"pool": "decode"},
                       "tolerations": [{"key": "dedicated", "operator": "Exists"}]},
            "kvTransfer": {"transport": "tcp", "port": 9100}}
TPU_POOL = {"model": {"source": {"uri": "hf://Qwen/Qwen3-0.6B"}, "maxModelLen": 8192},
            "profile": "input-heavy",
            "prefill": {"replicas": 3,
                        "accelerator": {"kind": "tpu-v5e", "count": 4, "topology": "2x2"}},
            "decode": {"accelerator": {"kind": "tpu-v6e", "count": 8, "topology": "2x4"}}}
CPU = {"model": {"source": {"builtin": "tiny"}}, "profile": "agentic",
       "networkPolicy": {"metricsNamespaces": ["monitoring"]}}


def _render(spec: dict, decided=None) -> dict:
    children = render_children(LLMServiceSpec.model_validate(spec), OWNER, IMAGE, decided)
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


def _pod(children: dict, role: str) -> dict:
    return children[("Deployment", f"chat-{role}")]["spec"]["template"]["spec"]


@pytest.mark.parametrize("spec", [GPU_POOL, TPU_POOL, CPU], ids=["gpu", "tpu", "cpu"])
def test_every_child_is_there_with_owner_and_labels(spec):
    children = _render(spec)
    assert set(children) == {
        ("ConfigMap", "chat-engine"), ("Service", "chat-router"),
        ("Service", "chat-prefill-workers"), ("Service", "chat-decode-workers"),
        ("Deployment", "chat-prefill"), ("Deployment", "chat-decode"),
        ("Deployment", "chat-router"), ("PodDisruptionBudget", "chat-prefill"),
        ("PodDisruptionBudget", "chat-decode"), ("PodDisruptionBudget", "chat-router"),
        ("NetworkPolicy", "chat-prefill-workers"), ("NetworkPolicy", "chat-decode-workers"),
    }
    for child in children.values():
        meta = child["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [{
            "apiVersion": "pdserve.dev/v1alpha1", "kind": "LLMService", "name": "chat",
            "uid": "0b8f-uid", "controller": True, "blockOwnerDeletion": True}]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "pdserve-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == "chat"
        assert meta["labels"]["pdserve.dev/llmservice"] == "chat"
    for role in ("prefill", "decode", "router"):
        deployment = children[("Deployment", f"chat-{role}")]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["pdserve.dev/role"] == role
        assert labels["app.kubernetes.io/component"] == role
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()


@pytest.mark.parametrize("spec", [GPU_POOL, TPU_POOL, CPU], ids=["gpu", "tpu", "cpu"])
def test_pods_meet_restricted_pod_security(spec):
    children = _render(spec)
    for role in ("prefill", "decode", "router"):
        pod = _pod(children, role)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["terminationGracePeriodSeconds"] >= 60
        for container in pod["containers"] + pod.get("initContainers", []):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/cache"} <= mounts
        main = pod["containers"][0]
        assert main["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert main["livenessProbe"]["httpGet"]["path"] == "/health"
        assert main["startupProbe"]["httpGet"]["path"] == "/health"
        assert main["resources"]["requests"] and main["resources"]["limits"]
    for role in ("prefill", "decode"):
        volumes = {v["name"]: v for v in _pod(children, role)["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def test_gpu_pool_scheduling_and_worker_command_line():
    children = _render(GPU_POOL)
    prefill = _pod(children, "prefill")
    assert prefill["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
            "effect": "NoSchedule"} in prefill["tolerations"]
    resources = prefill["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 2
    command = prefill["containers"][0]["command"]
    assert command[:4] == ["pdserve", "worker", "--role", "prefill"]
    flags = dict(zip(command[2::2], command[3::2], strict=True))
    assert flags["--model"] == "/models/llama"
    assert flags["--served-model-name"] == "story-model"
    assert flags["--device"] == "cuda" and flags["--kv-port"] == "9100"
    assert flags["--tensor-parallel-size"] == "2"  # every GPU the pod reserves
    assert flags["--config"] == "/etc/pdserve/prefill.json"
    volumes = {v["name"]: v for v in prefill["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    decode = _pod(children, "decode")
    assert decode["nodeSelector"]["pool"] == "decode"
    assert {"key": "dedicated", "operator": "Exists"} in decode["tolerations"]
    assert children[("Deployment", "chat-decode")]["spec"]["replicas"] == 3  # output-heavy


def test_tpu_pool_selects_slice_and_fetches_the_model():
    children = _render(TPU_POOL)
    prefill = _pod(children, "prefill")
    assert prefill["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x2"}
    assert prefill["containers"][0]["resources"]["limits"]["google.com/tpu"] == 4
    assert _pod(children, "decode")["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "2x4"
    fetch = prefill["initContainers"][0]
    assert fetch["command"] == ["pdserve", "model", "fetch", "hf://Qwen/Qwen3-0.6B",
                                "/models/model"]
    assert "--model" in prefill["containers"][0]["command"]
    assert children[("Deployment", "chat-prefill")]["spec"]["replicas"] == 3
    config = json.loads(children[("ConfigMap", "chat-engine")]["data"]["prefill.json"])
    assert config["max_model_len"] == 8192 and config["enable_prefix_caching"] is False


def test_tpu_pods_run_the_tpu_image_on_xla():
    children = _render(TPU_POOL)
    for role in ("prefill", "decode"):
        pod = _pod(children, role)
        worker = pod["containers"][0]
        assert worker["image"] == "registry.example/pdserve:1.2.3-tpu"
        assert pod["initContainers"][0]["image"] == worker["image"]
        command = worker["command"]
        assert command[command.index("--device") + 1] == "xla"
        env = {e["name"]: e.get("value") for e in worker["env"]}
        assert env["PJRT_DEVICE"] == "TPU" and env["PDSERVE_XLA_CACHE_DIR"] == "/cache/xla"
    router = children[("Deployment", "chat-router")]["spec"]["template"]["spec"]
    assert router["containers"][0]["image"] == IMAGE  # the router needs no accelerator
    gpu = _pod(_render(GPU_POOL), "prefill")["containers"][0]
    assert gpu["image"] == IMAGE and "PJRT_DEVICE" not in {e["name"] for e in gpu["env"]}


@pytest.mark.parametrize(("image", "variant"), [
    ("pdserve:0.1.0", "pdserve:0.1.0-tpu"),
    ("pdserve", "pdserve:latest-tpu"),
    ("registry.example:5000/pdserve", "registry.example:5000/pdserve:latest-tpu"),
    ("registry.example:5000/pdserve:2", "registry.example:5000/pdserve:2-tpu"),
    ("pdserve@sha256:" + "a" * 64, "pdserve@sha256:" + "a" * 64),  # a digest is one image
])  # fmt: skip
def test_the_tpu_image_is_the_worker_image_tag_plus_tpu(image, variant):
    from pdserve.controller.context import image_variant

    assert image_variant(image, "-tpu") == variant


def test_cpu_builtin_model_and_router_command_line():
    children = _render(CPU)
    worker = _pod(children, "decode")
    assert "nodeSelector" not in worker and "initContainers" not in worker
    assert "nvidia.com/gpu" not in worker["containers"][0]["resources"]["limits"]
    command = worker["containers"][0]["command"]
    assert command[command.index("--model") + 1] == "builtin:tiny"
    assert command[command.index("--device") + 1] == "cpu"
    router = _pod(children, "router")["containers"][0]["command"]
    assert router[:2] == ["pdserve", "router"]
    assert router[router.index("--prefill-service") + 1] == (
        "chat-prefill-workers.team-a.svc:8000")
    assert router[router.index("--decode-service") + 1] == "chat-decode-workers.team-a.svc:8000"
    assert router[router.index("--served-model-name") + 1] == "chat"
    assert router[router.index("--routing-policy") + 1] == "prefix-affinity"
    assert router[router.index("--disaggregation") + 1] == "conditional"  # the API's default


def test_services_headless_for_workers_and_clusterip_for_router():
    children = _render(CPU)
    router = children[("Service", "chat-router")]["spec"]
    assert router.get("clusterIP") is None and router["ports"][0]["port"] == 8080
    workers = children[("Service", "chat-decode-workers")]["spec"]
    assert workers["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in workers["ports"]} == {"http": 8000, "kv": 9000}


def test_engine_config_holds_only_flags_the_worker_knows():
    config = json.loads(_render(CPU)[("ConfigMap", "chat-engine")]["data"]["decode.json"])
    known = {"dtype", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size",
             "num_kv_blocks", "enable_prefix_caching", "kv_transport", "kv_timeout",
             "kv_fallback", "drain_timeout"}
    assert set(config) <= known
    assert config["max_num_seqs"] == 128 and config["enable_prefix_caching"] is True


def test_kv_compression_reaches_the_worker_as_its_flags(tmp_path):
    from pdserve.runtime.cli import parse_settings

    spec = {**CPU, "prefill": {"engine": {"kvCompression": {"method": "snapkv", "ratio": 0.5}}},
            "decode": {"engine": {"kvCompression": {"method": "streaming",
                                                     "windowTokens": 2048}}}}
    data = _render(spec)[("ConfigMap", "chat-engine")]["data"]
    plain = json.loads(_render(CPU)[("ConfigMap", "chat-engine")]["data"]["prefill.json"])
    assert not any(key.startswith("kv_compression") for key in plain)
    for role, expected in (("prefill", {"kv_compression_method": "snapkv",
                                        "kv_compression_ratio": 0.5}),
                           ("decode", {"kv_compression_method": "streaming",
                                       "kv_compression_window_tokens": 2048})):
        config = json.loads(data[f"{role}.json"])
        assert {k: v for k, v in config.items() if k.startswith("kv_compression")} == expected
        path = tmp_path / f"{role}.json"
        path.write_text(data[f"{role}.json"])
        settings = parse_settings(["--config", str(path), "--model", "builtin:tiny"])
        assert {k: settings[k] for k in expected} == expected  # the worker reads it


def test_config_change_rolls_the_pods():
    before = _render(CPU)[("Deployment", "chat-decode")]["spec"]["template"]
    changed = {**CPU, "decode": {"engine": {"maxNumSeqs": 7}}}
    after = _render(changed)[("Deployment", "chat-decode")]["spec"]["template"]
    hash_key = "pdserve.dev/config-hash"
    assert before["metadata"]["annotations"][hash_key] != after["metadata"]["annotations"][hash_key]


def test_network_policies_fence_kv_and_http_ports():
    children = _render(CPU)
    decode = children[("NetworkPolicy", "chat-decode-workers")]["spec"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in decode["ingress"]}
    assert by_port[9000] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/instance": "chat", "pdserve.dev/llmservice": "chat",
        "pdserve.dev/role": "prefill"}}}]
    router, prometheus, listed = by_port[8000]
    assert router["podSelector"]["matchLabels"]["pdserve.dev/role"] == "router"
    # By default kube-prometheus's Prometheus may scrape the workers.
    assert prometheus == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    assert listed == {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}
    prefill = children[("NetworkPolicy", "chat-prefill-workers")]["spec"]
    assert [rule["ports"][0]["port"] for rule in prefill["ingress"]] == [8000]
    assert prefill["ingress"][0]["from"] == by_port[8000]
    disabled = _render({**CPU, "networkPolicy": {"enabled": False}})
    assert not [key for key in disabled if key[0] == "NetworkPolicy"]


def test_metrics_peers_reach_only_the_http_port():
    peer = {"namespaceSelector": {"matchExpressions": [
                {"key": "team", "operator": "In", "values": ["observability"]}]},
            "podSelector": {"matchLabels": {"app": "vmagent"}}}
    children = _render({**CPU, "networkPolicy": {"metricsPeers": [peer]}})
    for role in ("prefill", "decode"):
        ingress = children[("NetworkPolicy", f"chat-{role}-workers")]["spec"]["ingress"]
        admitting = [rule for rule in ingress if peer in rule["from"]]
        assert [rule["ports"] for rule in admitting] == [[{"port": 8000, "protocol": "TCP"}]]
    none = _render({**CPU, "networkPolicy": {"metricsPeers": [], "metricsNamespaces": []}})
    ingress = none[("NetworkPolicy", "chat-prefill-workers")]["spec"]["ingress"]
    assert [len(rule["from"]) for rule in ingress] == [1]  # the routers alone


def test_planner_decisions_are_rendered_within_bounds():
    spec = {**CPU, "autoscaling": {"enabled": True, "prometheusUrl": "http://prom:9090",
                                   "decode": {"minReplicas": 1, "maxReplicas": 5}}}
    children = _render(spec, {"prefillReplicas": 2, "decodeReplicas": 9})
    assert children[("Deployment", "chat-prefill")]["spec"]["replicas"] == 2
    assert children[("Deployment", "chat-decode")]["spec"]["replicas"] == 5
    off = _render(CPU, {"prefillReplicas": 4})
    assert off[("Deployment", "chat-prefill")]["spec"]["replicas"] == 1


def test_user_resources_replace_defaults_but_keep_accelerators():
    spec = {**CPU, "prefill": {"accelerator": {"kind": "nvidia-l4"},
                               "resources": {"requests": {"cpu": "6", "memory": "20Gi"}}}}
    resources = _pod(_render(spec), "prefill")["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "6", "memory": "20Gi", "nvidia.com/gpu": 1},
                         "limits": {"nvidia.com/gpu": 1}}


def test_spec_image_overrides_the_default():
    children = _render({**CPU, "image": "mine:dev", "imagePullPolicy": "Always"})
    container = _pod(children, "router")["containers"][0]
    # render_children takes the image chosen by the caller; the reconciler picks spec.image.
    assert container["image"] == IMAGE and container["imagePullPolicy"] == "Always"


def test_accelerator_pools_roll_without_surge():
    gpu = _render(GPU_POOL)[("Deployment", "chat-decode")]["spec"]["strategy"]["rollingUpdate"]
    assert gpu == {"maxSurge": 0, "maxUnavailable": 1}
    cpu = _render(CPU)
    for role in ("decode", "router"):
        rolling = cpu[("Deployment", f"chat-{role}")]["spec"]["strategy"]["rollingUpdate"]
        assert rolling == {"maxSurge": 1, "maxUnavailable": 0}


MULTI_NODE = {"model": {"source": {"pvc": {"claimName": "weights", "path": "llama-70b"}}},
              "prefill": {"accelerator": {"kind": "nvidia-h100", "count": 8}},
              "decode": {"replicas": 3,
                         "accelerator": {"kind": "nvidia-h100", "count": 8, "nodes": 2}}}


def test_a_replica_over_nodes_is_a_leaderworkerset_of_leader_and_rank_pods():
    children = _render(MULTI_NODE)
    assert ("Deployment", "chat-decode") not in children
    lws = children[("LeaderWorkerSet", "chat-decode")]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert lws["spec"]["replicas"] == 3  # groups
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2 and group["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert lws["spec"]["startupPolicy"] == "LeaderCreated"
    leader, follower = group["leaderTemplate"], group["workerTemplate"]
    for template in (leader, follower):
        container = template["spec"]["containers"][0]
        command = container["command"]
        assert command[command.index("--tensor-parallel-size") + 1] == "16"
        assert command[command.index("--num-nodes") + 1] == "$(LWS_GROUP_SIZE)"
        assert command[command.index("--node-rank") + 1] == "$(LWS_WORKER_INDEX)"
        assert command[command.index("--rendezvous") + 1] == "$(LWS_LEADER_ADDRESS):29500"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8  # per pod
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    # The leader serves (the role's Service, PDB and the planner select it); the other pods
    # only compute, so nothing that selects the role finds them.
    assert leader["metadata"]["labels"]["pdserve.dev/role"] == "decode"
    assert "readinessProbe" in leader["spec"]["containers"][0]
    assert {p["name"] for p in leader["spec"]["containers"][0]["ports"]} == {
        "http", "kv", "rendezvous"}
    assert "pdserve.dev/role" not in follower["metadata"]["labels"]
    assert follower["metadata"]["labels"]["pdserve.dev/follower-of"] == "decode"
    assert "ports" not in follower["spec"]["containers"][0]
    assert "readinessProbe" not in follower["spec"]["containers"][0]
    # Single-node roles are unchanged.
    assert ("Deployment", "chat-prefill") in children


def test_the_ranks_of_a_replica_over_nodes_may_reach_each_other():
    children = _render(MULTI_NODE)
    policy = children[("NetworkPolicy", "chat-decode-workers-ranks")]
    group = {"leaderworkerset.sigs.k8s.io/name": "chat-decode"}
    assert policy["spec"]["podSelector"]["matchLabels"] == group
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": group}}]}]
    assert ("NetworkPolicy", "chat-prefill-workers-ranks") not in children


def test_nodes_are_refused_on_tpu():
    with pytest.raises(ValueError, match="nodes must be 1 on TPU"):
        LLMServiceSpec.model_validate({**TPU_POOL, "decode": {"accelerator": {
            "kind": "tpu-v6e", "count": 8, "topology": "2x4", "nodes": 2}}})
