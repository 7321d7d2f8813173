"""Constrained decoding's parts without a server: the grammar specs, the compiler's vocabulary
rules (UTF-8, control characters), the engine under a grammar, and the streaming parser."""

from __future__ import annotations

import json

import jsonschema
import pytest

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.grammar.spec import GrammarError, Tool, json_grammar, tool_call_grammar
from pdserve.runtime.serving.tool_calls import ToolCallParser, parse_tool_calls

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
        "required": ["city"]}
TOOLS = [Tool("get_weather", CITY), Tool("ping", None)]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    model = init_model(tmp_path_factory.mktemp("model") / "tiny")
    return LLMEngine(EngineConfig(model=str(model), device="cpu", num_kv_blocks=256))


def generate(engine, spec, max_tokens=400, **params):
    engine.add_request("r", list(range(20, 40)), SamplingParams(
        max_tokens=max_tokens, temperature=params.pop("temperature", 0.0), grammar=spec,
        **params))
    text, reason = "", None
    while engine.has_unfinished():
        for output in engine.step():
            text += output.text
            reason = output.finish_reason
    return text, reason


def test_specs_are_canonical_and_shaped_by_the_choice():
    required = json.loads(tool_call_grammar(TOOLS, "required", True, None, 4))["format"]
    assert required["type"] == "tags_with_separator" and required["at_least_one"]
    assert not required["stop_after_first"]
    named = json.loads(tool_call_grammar(TOOLS, "ping", True, None, 4))["format"]
    assert [tag["begin"] for tag in named["tags"]] == ['<tool_call>\n{"name": "ping", '
                                                       '"arguments": ']
    assert named["stop_after_first"]
    auto = json.loads(tool_call_grammar(TOOLS, "auto", False, None, 4))["format"]
    assert auto["type"] == "triggered_tags" and auto["stop_after_first"]
    answer = json.loads(tool_call_grammar(TOOLS, "auto", True, CITY, 4))["format"]
    assert answer["type"] == "or"
    assert tool_call_grammar(TOOLS, "auto", True, None, 4) == \
        tool_call_grammar(list(TOOLS), "auto", True, None, 4)


def test_length_bounded_strings_get_a_pattern_without_raw_control_characters():
    schema = json.loads(json_grammar({"type": "object", "properties": {"a": {
        "type": "array", "items": {"type": "string", "minLength": 2, "maxLength": 5}}}}, 4))
    item = schema["format"]["json_schema"]["properties"]["a"]["items"]
    assert item == {"type": "string", "pattern": '^[^"\\\\\\u0000-\\u001f]{2,5}$'}


def test_unenforced_keywords_are_refused_but_data_and_property_names_are_not():
    with pytest.raises(GrammarError, match="'not' is not supported"):
        json_grammar({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, 4)
    with pytest.raises(GrammarError, match="'if' is not supported"):
        json_grammar({"anyOf": [{"if": {}, "then": {}}]}, 4)
    json_grammar({"type": "object", "properties": {"if": {"const": {"not": 1}}},
                  "default": {"then": 2}}, 4)


def test_constrained_output_validates_and_ends_the_request(engine):
    for seed in range(6):
        text, reason = generate(engine, json_grammar(CITY, 4), temperature=1.0, seed=seed)
        assert reason == "stop"
        jsonschema.validate(json.loads(text), CITY)


def test_the_grammar_ends_a_request_that_ignores_eos(engine):
    text, reason = generate(engine, json_grammar(CITY, 4), ignore_eos=True)
    assert reason == "stop"
    jsonschema.validate(json.loads(text), CITY)


def test_forced_call_parses(engine):
    text, reason = generate(engine, tool_call_grammar(TOOLS, "get_weather", False, None, 4))
    content, [call] = parse_tool_calls(text)
    assert content is None and call.name == "get_weather" and reason == "stop"
    jsonschema.validate(json.loads(call.arguments), CITY)


def test_overlong_utf8_after_a_lead_byte_is_banned(engine):
    grammars = engine.grammars
    grammars.warm_up()
    lead = grammars.token_bytes.index(b"\xe0")
    overlong = grammars.token_bytes.index(b"\x99")
    state = grammars.start(json_grammar({"type": "string"}, 4))
    assert state.accept(grammars.token_bytes.index(b'"')) and state.accept(lead)
    assert overlong in state.banned_next()
    assert grammars.token_bytes.index(b"\xa0") not in state.banned_next()
    assert b"\x04" not in grammars.token_bytes and b"\xc0" not in grammars.token_bytes


def test_the_torch_mask_equals_xgrammars_kernel(engine):
    import torch
    import xgrammar

    from pdserve.runtime.grammar.masks import mask_with_torch

    states = [engine.grammars.start(json_grammar(CITY, 4)) for _ in range(3)]
    states[1].accept(engine.grammars.token_bytes.index(b"{"))
    bitmask = xgrammar.allocate_token_bitmask(3, 4096)
    for i in (0, 1):
        states[i].matcher.fill_next_token_bitmask(bitmask, i)
    logits = torch.randn(3, 4096)
    expected = logits.clone()
    xgrammar.apply_token_bitmask_inplace(expected, bitmask, indices=[0, 1])
    mask_with_torch(logits, bitmask, [0, 1])
    assert torch.equal(logits, expected)
    assert torch.isinf(logits[1]).sum() > 4000 and not torch.isinf(logits[2]).any()


def test_a_first_token_outside_the_grammar_is_refused(engine):
    params = SamplingParams(max_tokens=8, grammar=json_grammar(CITY, 4))
    brace = engine.tokenizer.encode("x")[0]
    with pytest.raises(ValueError, match="does not match the request's grammar"):
        engine.admit_with_kv("kv", list(range(20, 40)), brace, params)
    engine.abort("kv")


def test_an_unsupported_schema_is_a_grammar_error(engine):
    with pytest.raises(GrammarError, match="wrong"):
        engine.grammars.compile(json_grammar({"type": "wrong"}, 4))


CALL = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
        '"n": [1, {"a": "}"}]}}\n</tool_call>')


@pytest.mark.parametrize("piece", [1, 3, 7, 100])
def test_streamed_arguments_arrive_as_deltas_after_the_name(piece):
    text = "Sure. " + CALL + "\n" + CALL.replace("Paris", "Oslo")
    parser = ToolCallParser()
    deltas, content = [], ""
    for start in range(0, len(text), piece):
        events = parser.feed(text[start:start + piece])
        deltas += events.deltas
        content += events.content
    tail = parser.finish()
    deltas += tail.deltas
    assert content + tail.content == "Sure. "
    heads = [d for d in deltas if "id" in d]
    assert [(d["index"], d["function"]["name"]) for d in heads] == [(0, "get_weather"),
                                                                   (1, "get_weather")]
    for index, city in ((0, "Paris"), (1, "Oslo")):
        arguments = "".join(d["function"]["arguments"] for d in deltas if d["index"] == index)
        assert json.loads(arguments) == {"city": city, "n": [1, {"a": "}"}]}
    if piece < 20:
        assert len(deltas) > 4  # the arguments came in pieces


def test_a_call_cut_off_by_max_tokens_is_content():
    text = CALL[:40]
    content, calls = parse_tool_calls(text)
    assert calls == [] and content == text
