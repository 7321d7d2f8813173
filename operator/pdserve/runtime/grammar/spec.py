"""The grammar a request's output must match, as one canonical JSON string (pure Python).

The string is an xgrammar structural tag (`{"type": "structural_tag", "format": ...}`). It is
what `SamplingParams.grammar` holds: plain data, so it travels in the KV handoff's offer, compares
equal between a prefill and a decode worker, and keys the compiler's cache.

Tool calls use the hermes format that the chat templates of the built-in models (and Qwen's)
ask for: `<tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>`, one call per tag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Consecutive whitespace characters constrained JSON may hold: weak models otherwise spend their
# whole budget on it.
DEFAULT_MAX_WHITESPACE = 4
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_CALL_BEGIN = TOOL_CALL_OPEN + '\n{"name": '
_ARGUMENTS_FIELD = ', "arguments": '
_CALL_END = "}\n" + TOOL_CALL_CLOSE
_CALL_SEPARATOR = "\n"
# JSON strings must escape C0 control characters; xgrammar's rule for strings with a length
# bound lets them through raw (and forbids quotes and backslashes), so such strings get this
# pattern instead, which keeps the bound and drops only what JSON forbids raw.
_BOUNDED_STRING = '^[^"\\\\\\u0000-\\u001f]{%d,%s}$'


# Keywords xgrammar accepts but does not enforce: refused rather than silently ignored.
UNENFORCED_KEYWORDS = ("not", "if", "then", "else")


class GrammarError(ValueError):
    """A schema the output cannot be constrained to (unsupported, or invalid)."""


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict[str, Any] | None  # a JSON schema of the arguments; None: any object


# Where a schema holds schemas (the other keywords hold data: enum, const, default, ...).
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")
_SCHEMA_VALUES = ("items", "additionalProperties", "contains", "propertyNames")


def _subschemas(key: str, value: Any) -> Any:
    if key in _SCHEMA_MAPS and isinstance(value, dict):
        return {name: _normalise(sub) for name, sub in value.items()}
    if key in _SCHEMA_LISTS and isinstance(value, list):
        return [_normalise(sub) for sub in value]
    if key in _SCHEMA_VALUES:
        return _normalise(value)
    return value


def _normalise(schema: Any) -> Any:
    """A copy of `schema` whose length-bounded plain strings carry `_BOUNDED_STRING`; a schema
    using an unenforced keyword raises GrammarError."""
    if not isinstance(schema, dict):
        return schema
    for keyword in UNENFORCED_KEYWORDS:
        if keyword in schema:
            raise GrammarError(f"the keyword {keyword!r} is not supported")
    result = {key: _subschemas(key, value) for key, value in schema.items()}
    bounded = "minLength" in schema or "maxLength" in schema
    plain = not any(key in schema for key in ("pattern", "format", "enum", "const"))
    if schema.get("type") == "string" and bounded and plain:
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        result["pattern"] = _BOUNDED_STRING % (low, "" if high is None else int(high))
        result.pop("minLength", None)  # the pattern holds the bound
        result.pop("maxLength", None)
    return result


def _arguments_schema(tool: Tool) -> dict[str, Any]:
    if tool.parameters is None:
        return {"type": "object"}
    return dict(_normalise(tool.parameters))


def _json(schema: Any, max_whitespace: int) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": max_whitespace}


def _call_tag(tool: Tool, max_whitespace: int) -> dict[str, Any]:
    return {"type": "tag", "begin": _CALL_BEGIN + json.dumps(tool.name) + _ARGUMENTS_FIELD,
            "content": _json(_arguments_schema(tool), max_whitespace), "end": _CALL_END}


def _calls(tools: Sequence[Tool], parallel: bool, max_whitespace: int) -> dict[str, Any]:
    """One or more tool calls and nothing else (one only unless `parallel`)."""
    return {"type": "tags_with_separator", "separator": _CALL_SEPARATOR, "at_least_one": True,
            "stop_after_first": not parallel,
            "tags": [_call_tag(tool, max_whitespace) for tool in tools]}


def _structural_tag(format_: dict[str, Any]) -> str:
    return json.dumps({"type": "structural_tag", "format": format_}, sort_keys=True,
                      separators=(",", ":"))


def tool_call_grammar(tools: Sequence[Tool], choice: str, parallel: bool,
                      response_schema: dict[str, Any] | None, max_whitespace: int) -> str:
    """`choice`: "auto" (text, or calls after the text), "required" (calls only), or the name
    of the one function to call. Under "auto", a `response_schema` replaces free text: the
    answer is then that JSON, or calls."""
    if choice == "required":
        return _structural_tag(_calls(tools, parallel, max_whitespace))
    if choice != "auto":
        [tool] = [tool for tool in tools if tool.name == choice]
        return _structural_tag(_calls([tool], False, max_whitespace))
    if response_schema is not None:
        return _structural_tag({"type": "or", "elements": [
            _json(_normalise(response_schema), max_whitespace),
            _calls(tools, parallel, max_whitespace)]})
    return _structural_tag({"type": "triggered_tags", "triggers": [TOOL_CALL_OPEN],
                            "tags": [_call_tag(tool, max_whitespace) for tool in tools],
                            "stop_after_first": not parallel})


def json_grammar(schema: dict[str, Any] | None, max_whitespace: int) -> str:
    """The whole output is one JSON value matching `schema` (None: any JSON object)."""
    return _structural_tag(_json(_normalise(schema) if schema is not None else {"type": "object"},
                                 max_whitespace))
