"""The generated CRD: fresh, structural, documented, with every validation rule in place."""

from pathlib import Path

import yaml

from pdserve.api.cli import main as crds_main
from pdserve.api.crd import CRD_FILENAME, crd_yaml, custom_resource_definition

REPO = Path(__file__).resolve().parents[1]


def _schema() -> dict:
    return custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node, path="$"):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _walk(node[key], f"{path}[{key}]")


def _rules() -> list[tuple[str, str, str]]:
    return [(path, rule["rule"], rule["message"]) for path, node in _walk(_schema())
            for rule in node.get("x-kubernetes-validations", [])]


def test_committed_crd_is_fresh():
    committed = (REPO / "crds" / CRD_FILENAME).read_text()
    assert committed == crd_yaml(), "crds/ is stale: run `pdserve crds --output crds/`"


def test_cli_check_and_write(tmp_path, capsys):
    assert crds_main(["--output", str(tmp_path), "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert crds_main(["--output", str(tmp_path)]) == 0
    assert crds_main(["--output", str(tmp_path), "--check"]) == 0
    assert yaml.safe_load((tmp_path / CRD_FILENAME).read_text())["kind"] == (
        "CustomResourceDefinition")


def test_names_scope_and_subresources():
    spec = custom_resource_definition()["spec"]
    assert spec["group"] == "pdserve.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == "llmservices" and spec["names"]["shortNames"] == ["llms"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Profile", "Prefill", "Decode", "Ready", "Endpoint", "Age"]


def test_schema_is_structural():
    text = yaml.safe_dump(_schema())
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "const:", "nullable", "title:"):
        assert forbidden not in text, forbidden
    for path, node in _walk(_schema()):
        loose = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string")
        assert loose or node.get("type"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert path.endswith((".affinity", ".inputs")), f"{path} is loosely typed"


def test_every_spec_and_status_field_is_described():
    for path, node in _walk(_schema()):
        if path.startswith(("$.spec", "$.status")) and "[" not in path.rsplit(".", 1)[-1]:
            assert node.get("description"), f"{path} has no description"


def test_defaults_fill_nested_objects():
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["profile"]["default"] == "balanced"
    # Complete objects: the apiserver checks defaults against the CEL rules as they are.
    for name in ("prefill", "decode", "router", "kvTransfer", "autoscaling", "networkPolicy"):
        assert isinstance(spec[name]["default"], dict), name
    assert spec["prefill"]["default"]["accelerator"] == {"kind": "cpu", "count": 1, "nodes": 1}
    assert spec["autoscaling"]["default"]["prefill"] == {"minReplicas": 1, "maxReplicas": 4}
    assert spec["kvTransfer"]["default"]["port"] == 9000
    assert "null" not in yaml.safe_dump(spec)
    assert spec["kvTransfer"]["properties"]["port"]["default"] == 9000
    assert spec["router"]["properties"]["routingPolicy"]["default"] == "prefix-affinity"
    assert "default" not in spec["prefill"]["properties"]["replicas"]


def test_conditions_are_a_map_list_keyed_by_type():
    conditions = _schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    required = conditions["items"]["required"]
    assert set(required) >= {"type", "status", "lastTransitionTime", "reason"}


def test_cross_field_rules_are_present():
    by_message = {message: (path, rule) for path, rule, message in _rules()}
    expected = {
        "exactly one model source": "$.spec.model.source",
        "minReplicas must not exceed maxReplicas": "$.spec.autoscaling.prefill",
        "topology applies only to TPU": "$.spec.prefill.accelerator",
        "TPU accelerators need a topology": "$.spec.decode.accelerator",
        "count must equal the chips": "$.spec.prefill.accelerator",
        "count must be 1 for cpu": "$.spec.prefill.accelerator",
        "acceleratorBudget is below": "$.spec",
        "prometheusUrl is required": "$.spec.autoscaling",
        "workers' HTTP port": "$.spec.kvTransfer",
        "chunkSize must not exceed": "$.spec.prefill.engine",
        "snapkv needs exactly one of ratio": "$.spec.decode.engine.kvCompression",
        "budgetTokens must exceed windowTokens": "$.spec.prefill.engine.kvCompression",
        "sinkTokens applies only to method streaming": "$.spec.prefill.engine.kvCompression",
        "not in resources.limits": "$.spec.router.resources",
        "a metrics peer needs": "$.spec.networkPolicy.metricsPeers[items]",
        "values must be non-empty for In":
            "$.spec.networkPolicy.metricsPeers[items].podSelector.matchExpressions[items]",
    }
    for fragment, path in expected.items():
        hits = [p for message, (p, _) in by_message.items() if fragment in message]
        hits += [p for p, _, message in _rules() if fragment in message]
        assert path in hits, f"no rule {fragment!r} at {path}"


def test_simple_bounds_are_schema_keywords():
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["prefill"]["properties"]["replicas"]["minimum"] == 0
    accelerator = spec["decode"]["properties"]["accelerator"]["properties"]
    assert accelerator["count"]["minimum"] == 1
    port = spec["kvTransfer"]["properties"]["port"]
    assert (port["minimum"], port["maximum"]) == (1024, 65535)
    assert spec["model"]["properties"]["source"]["properties"]["uri"]["pattern"].startswith(
        "^(hf|s3|gs)://")
    timeout = spec["kvTransfer"]["properties"]["timeoutSeconds"]
    assert timeout["minimum"] == 0 and timeout["exclusiveMinimum"] is True
