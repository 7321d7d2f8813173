"""LLMService specs generated from the CRD's own OpenAPI schema (hypothesis-jsonschema), for
e2e/test_operator_fuzz.py.

Two kinds, mixed by index so that a run's share of each is fixed:

- `schema`: a whole spec drawn from the spec's schema. The CEL rules (exactly one model source,
  TPU topologies, ...) are not in the JSON schema, so the apiserver refuses most of these.
- `mutant`: a known-good spec (the repo's samples, a minimal one) with one to three fields, picked
  from every property path of the schema, replaced by a value drawn from that field's own schema
  (or removed): near-valid, so most reach the operator.

Kubernetes-only keywords are translated or dropped: `x-kubernetes-int-or-string` becomes an
integer-or-string, `x-kubernetes-preserve-unknown-fields` an open object of small values, and
objects with `properties` become closed (`additionalProperties: false`), since the test creates
them with strict field validation and an unknown field would only test the apiserver. Generation
is deterministic for a seed (hypothesis, database off, one seeded run).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import providers
from hypothesis_jsonschema import from_schema

ROOT = Path(__file__).resolve().parents[1]
CRD_PATH = ROOT / "crds" / "pdserve.dev_llmservices.yaml"
SAMPLES_DIR = ROOT / "manifests" / "samples"
# Out of every 10 specs, this many are whole-schema draws; the rest are mutants.
SCHEMA_DRAWS_PER_10 = 3
REMOVE_PER_10 = 1  # of a mutant's changed fields, this many are removed instead
MINIMAL: dict[str, Any] = {"model": {"source": {"builtin": "tiny"}}}

JsonSchema = dict[str, Any]
Path_ = tuple[str, ...]

# Keywords of the CRD's schema that carry no constraint on the value (or none JSON Schema knows).
_IGNORED = {"description", "default", "x-kubernetes-validations", "x-kubernetes-list-type",
            "x-kubernetes-list-map-keys", "x-kubernetes-embedded-resource"}
# What a free-form (preserve-unknown-fields) object holds here: a few small JSON values.
_LOOSE_VALUE: JsonSchema = {"anyOf": [
    {"type": "string", "maxLength": 8}, {"type": "integer"}, {"type": "boolean"},
    {"type": "object", "maxProperties": 2,
     "additionalProperties": {"type": "string", "maxLength": 8}},
]}


@dataclass(frozen=True)
class Generated:
    spec: dict[str, Any]
    origin: str  # "schema" or "mutant:<base>:<changed paths>"


def crd_spec_schema(crd_path: Path = CRD_PATH) -> JsonSchema:
    """The OpenAPI schema of `.spec` as the committed CRD publishes it."""
    crd = yaml.safe_load(crd_path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema: JsonSchema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def json_schema(node: JsonSchema) -> JsonSchema:
    """A CRD (structural OpenAPI v3) schema as plain JSON Schema for hypothesis-jsonschema."""
    if node.get("x-kubernetes-int-or-string"):
        return {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 16}]}
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out: JsonSchema = {"type": "object", "maxProperties": 3,
                           "additionalProperties": _LOOSE_VALUE}
        if "maxProperties" in node:
            out["maxProperties"] = min(3, node["maxProperties"])
        return out
    out = {}
    for key, value in node.items():
        if key in _IGNORED or key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [json_schema(sub) for sub in value]
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def property_paths(node: JsonSchema, prefix: Path_ = ()) -> list[tuple[Path_, JsonSchema]]:
    """Every field reachable through `properties` (lists and maps are replaced whole)."""
    found = []
    for name, sub in (node.get("properties") or {}).items():
        path = (*prefix, name)
        found.append((path, sub))
        found.extend(property_paths(sub, path))
    return found


def bases() -> dict[str, dict[str, Any]]:
    """Known-good specs: the minimal one and every sample's."""
    found = {"minimal": MINIMAL}
    for sample in sorted(SAMPLES_DIR.glob("*.yaml")):
        found[sample.stem] = yaml.safe_load(sample.read_text())["spec"]
    return found


def with_field(spec: dict[str, Any], path: Path_, value: Any, remove: bool) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    node = out
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            if remove:
                return out
            child = node[part] = {}
        node = child
    if remove:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return out


@cache
def _strategy(schema_json: str) -> st.SearchStrategy[Any]:
    """Objects, maps, lists and unions composed of cached strategies; every other schema (the
    scalars: patterns, enums, bounds) is hypothesis-jsonschema's. Its own object strategy builds
    the strategies of the properties anew on every draw, ten times slower for specs this size."""
    schema: JsonSchema = json.loads(schema_json)
    kind = schema.get("type")
    if kind == "object" and "properties" in schema and schema.get(
            "additionalProperties") is False and not {"minProperties", "maxProperties"} & set(
            schema):
        required = set(schema.get("required") or [])
        fields = {name: _sub(sub) for name, sub in schema["properties"].items()}
        return st.fixed_dictionaries(
            {name: value for name, value in fields.items() if name in required},
            optional={name: value for name, value in fields.items() if name not in required})
    if kind == "object" and "properties" not in schema and isinstance(
            schema.get("additionalProperties"), dict):
        return st.dictionaries(_sub({"type": "string"}), _sub(schema["additionalProperties"]),
                               min_size=schema.get("minProperties", 0),
                               max_size=schema.get("maxProperties"))
    if kind == "array" and isinstance(schema.get("items"), dict) and not schema.get(
            "uniqueItems"):
        return st.lists(_sub(schema["items"]), min_size=schema.get("minItems", 0),
                        max_size=schema.get("maxItems"))
    if set(schema) == {"anyOf"}:
        return st.one_of([_sub(sub) for sub in schema["anyOf"]])
    return from_schema(schema)


def _sub(schema: JsonSchema) -> st.SearchStrategy[Any]:
    return _strategy(json.dumps(schema, sort_keys=True))


def strategy_of(schema: JsonSchema) -> st.SearchStrategy[Any]:
    """Values of one field of the CRD's schema (itself or any sub-schema)."""
    return _sub(json_schema(schema))


def generate(count: int, seed_value: int, crd_path: Path = CRD_PATH) -> list[Generated]:
    """`count` distinct specs, the same ones for the same seed and CRD."""
    schema = crd_spec_schema(crd_path)
    whole = strategy_of(schema)
    paths = property_paths(schema)
    known = bases()
    base_names = sorted(known)
    found: list[Generated] = []
    seen: set[str] = set()

    goal = 0

    def add(spec: dict[str, Any], origin: str) -> None:
        key = json.dumps(spec, sort_keys=True)
        if key not in seen and len(found) < goal:
            seen.add(key)
            found.append(Generated(spec, origin))

    def draw_whole(data: st.DataObject) -> None:
        add(data.draw(whole, label="spec"), "schema")

    def draw_mutant(data: st.DataObject) -> None:
        base = data.draw(st.sampled_from(base_names), label="base")
        picked = data.draw(st.lists(st.sampled_from(range(len(paths))), min_size=1,
                                    max_size=3, unique=True), label="paths")
        spec = known[base]
        changed = []
        for index in picked:
            path, sub = paths[index]
            remove = data.draw(st.integers(0, 9), label="remove?") < REMOVE_PER_10
            value = None if remove else data.draw(strategy_of(sub), label=".".join(path))
            spec = with_field(spec, path, value, remove)
            changed.append(("-" if remove else "") + ".".join(path))
        add(spec, f"mutant:{base}:{','.join(changed)}")

    # Two hypothesis runs (whole-schema draws, then mutants), each drawing only from its own
    # data; a run that yields duplicates is followed by another with the next seed.
    wanted = {draw_whole: (count * SCHEMA_DRAWS_PER_10 + 9) // 10}
    wanted[draw_mutant] = count - wanted[draw_whole]
    with _without_local_constants():
        for number, (draw, share) in enumerate(wanted.items()):
            goal = len(found) + share
            attempt = 0
            while len(found) < goal and attempt < 10:
                missing = goal - len(found)  # a few more: each run starts with the simplest
                run = settings(max_examples=missing + missing // 20 + 3, database=None,
                               deadline=None, phases=[Phase.generate],
                               suppress_health_check=list(HealthCheck))(given(st.data())(draw))
                seed(seed_value + 1000 * number + attempt)(run)()
                attempt += 1
    return found


@contextlib.contextmanager
def _without_local_constants() -> Iterator[None]:
    """Hypothesis also draws literals it finds in the local modules imported so far (the
    operator's, this package's): the specs of a seed would then change with any edit of that
    code, and differ between pytest and a plain script. Generate from its global pool alone."""
    if not hasattr(providers, "_get_local_constants"):
        yield
        return
    empty = providers.Constants()
    with mock.patch.object(providers, "_get_local_constants", lambda: empty):
        yield
