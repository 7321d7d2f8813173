"""Pydantic JSON schema -> Kubernetes structural OpenAPI v3 schema.

Structural schemas forbid $ref, nullable-anyOf unions, `const` and `additionalProperties: false`
next to `properties`; this rewrites pydantic's output into that form without changing meaning.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

JsonSchema = dict[str, Any]

_DROPPED_KEYS = frozenset({"title", "$defs"})


class _WithFactoryDefaults(GenerateJsonSchema):
    """Also publishes defaults made by default factories, as complete objects: the apiserver
    checks a default against the CEL rules as written, without filling nested defaults."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        if value is None:
            return NoDefault
        return _wire_form(value)


def _wire_form(value: Any) -> Any:
    """A default as the apiserver stores it: models (also in lists) as camelCase objects."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [_wire_form(item) for item in value]
    return value


def structural_schema(model: type[BaseModel]) -> JsonSchema:
    """The structural schema of a model, with every $ref inlined."""
    raw = model.model_json_schema(by_alias=True, mode="validation",
                                  schema_generator=_WithFactoryDefaults)
    return _convert(raw, raw.get("$defs", {}))


def _convert(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    node = _inline_ref(node, defs)
    node = _collapse_union(node, defs)
    loose = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    out: JsonSchema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or (loose and key == "additionalProperties"):
            # Loosely typed objects (e.g. core/v1 Affinity) are passed through as they are.
            continue
        if key == "properties":
            out[key] = {name: _property(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        else:
            out[key] = value
    if "properties" in out:
        out.pop("additionalProperties", None)
    return out


def _property(sub: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    converted = _convert(sub, defs)
    if converted.get("default", ...) is None:
        del converted["default"]
    return converted


def _inline_ref(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = defs[ref.rsplit("/", 1)[-1]]
    # The field's own keys (its description, default) win over the model's.
    merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return _inline_ref(merged, defs)


def _collapse_union(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    variants = node.get("anyOf")
    if variants is None:
        return node
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    concrete = [_inline_ref(v, defs) for v in variants if v.get("type") != "null"]
    types = sorted(v.get("type", "") for v in concrete)
    if len(concrete) == 1:
        return _collapse_union({**concrete[0], **rest}, defs)
    if types == ["integer", "string"]:
        return {**rest, "x-kubernetes-int-or-string": True}
    raise ValueError(f"no structural form for the union {variants!r}")
