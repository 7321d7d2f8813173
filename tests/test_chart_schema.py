"""values.schema.json closes every object and describes every value of values.yaml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "pdserve"


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    assert ref.startswith("#/definitions/"), ref
    return resolve(schema()["definitions"][ref.removeprefix("#/definitions/")])


def object_schemas(node: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """Every sub-schema of type object, with a path for messages."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append((where, node))
        for key, value in node.items():
            found += object_schemas(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += object_schemas(value, f"{where}/{index}")
    return found


@pytest.mark.timeout(10)
def test_every_object_level_is_closed() -> None:
    objects = object_schemas(schema(), "#")
    assert len(objects) > 20
    for where, node in objects:
        closed = node.get("additionalProperties")
        # false for records; a typed schema for string maps (labels, nodeSelector, resources).
        assert closed is False or isinstance(closed, dict), f"{where} is open"
        if isinstance(closed, dict):
            assert "properties" not in node, f"{where} mixes fixed keys with a map"


def check_value(value: Any, node: dict[str, Any], where: str) -> None:
    node = resolve(node)
    if isinstance(value, dict):
        assert node.get("type") == "object", f"{where}: schema is not an object"
        for key, sub in value.items():
            properties = node.get("properties", {})
            if key in properties:
                check_value(sub, properties[key], f"{where}.{key}")
            else:
                assert isinstance(node.get("additionalProperties"), dict), f"{where}.{key} unknown"
    elif isinstance(value, list):
        assert node.get("type") == "array", f"{where}: schema is not an array"


@pytest.mark.timeout(10)
def test_every_default_value_is_described() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    check_value(values, schema(), "values")
    described = set(schema()["properties"])
    assert described == set(values), "schema and values.yaml disagree on top-level keys"


@pytest.mark.timeout(10)
def test_operator_is_a_singleton() -> None:
    replicas = schema()["properties"]["operator"]["properties"]["replicas"]
    assert (replicas["minimum"], replicas["maximum"]) == (0, 1)
