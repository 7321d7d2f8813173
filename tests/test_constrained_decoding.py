"""Constrained decoding through the real path, with the tiny model (random weights: unconstrained,
its output is never a valid call): a `both` worker, and the router in front of a prefill and a
decode worker (the prefill worker samples the first token under the grammar, the decode worker
resumes it). Read with the official `openai` client; arguments checked with `jsonschema`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from e2e.local_processes import engine_debug, pd_stack
from pdserve.runtime.checkpoints.builtin import init_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 16},
    "unit": {"enum": ["celsius", "fahrenheit"]},
    "days": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 14},
             "maxItems": 3}},
    "required": ["city", "unit"]}
FLIGHT = {"type": "object", "properties": {
    "origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
    "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
    "passengers": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                         "age": {"type": "integer", "minimum": 0,
                                                 "maximum": 120}},
        "required": ["name", "age"]}},
    "options": {"type": "object", "properties": {
        "cabin": {"enum": ["economy", "business"]}, "refundable": {"type": "boolean"}},
        "required": ["cabin"]}},
    "required": ["origin", "destination", "passengers", "options"]}
SEARCH = {"type": "object", "properties": {
    "query": {"type": "string", "minLength": 1, "maxLength": 20},
    "limit": {"type": "integer", "minimum": 1, "maximum": 50},
    "sources": {"type": "array", "items": {"enum": ["web", "news", "papers"]}, "maxItems": 2}},
    "required": ["query", "limit"]}
SCHEMAS = {"get_weather": WEATHER, "book_flight": FLIGHT, "search": SEARCH}
TOOLS = [{"type": "function", "function": {"name": name, "description": f"{name} tool",
                                           "parameters": schema}}
         for name, schema in SCHEMAS.items()]
ANSWER = {"type": "object", "properties": {
    "answer": {"type": "string", "maxLength": 24},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}},
    "required": ["answer", "confidence"], "additionalProperties": False}
QUESTIONS = ["What is the weather in Paris?", "Book me a flight to Oslo.", "Find papers on KV.",
             "Plan a trip for two.", "Is it raining in Rome?", "Search the news for rockets."]
MAX_TOKENS = 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    model = str(init_model(tmp_path_factory.mktemp("model") / "tiny"))
    with pd_stack(model, tmp_path_factory.mktemp("logs"), short_prompt_threshold=1) as stack:
        yield stack


def client(process, async_=False):
    kind = openai.AsyncOpenAI if async_ else openai.OpenAI
    return kind(base_url=process.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def request(i: int) -> dict:
    """The i-th of a mix: required (parallel or not) or a named tool, greedy or sampled."""
    choice = ["required", "required", {"type": "function", "function": {"name":
              list(SCHEMAS)[i % 3]}}][i % 3]  # fmt: skip
    body = {"model": "tiny", "messages": [{"role": "user", "content": QUESTIONS[i % 6]}],
            "tools": TOOLS, "tool_choice": choice, "max_tokens": MAX_TOKENS,
            "parallel_tool_calls": i % 6 == 1, "temperature": 0 if i % 4 else 0.8}
    if body["temperature"]:
        body["seed"] = i
    return body


async def tool_calls_of(api, body: dict, stream: bool) -> tuple[str, list[tuple[str, str]]]:
    """(finish_reason, [(name, arguments)]) of one request, streamed or not."""
    if not stream:
        result = await api.chat.completions.create(**body)
        choice = result.choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        return choice.finish_reason, calls
    parts: dict[int, list[str]] = {}
    finish = None
    async for chunk in await api.chat.completions.create(**body, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            entry = parts.setdefault(call.index, ["", ""])
            entry[0] += call.function.name or ""
            entry[1] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return finish, [(name, arguments) for name, arguments in (parts[i] for i in sorted(parts))]


def check_calls(body: dict, finish: str, calls: list[tuple[str, str]],
                streamed: bool) -> None:
    if body["parallel_tool_calls"] and finish == "length":
        # Random weights may chain calls until max_tokens: the calls before the cut must be
        # whole and valid (streamed, the cut one arrived as deltas; whole, it is content).
        calls = calls[:-1] if streamed else calls
    else:
        assert finish == "tool_calls", (body, finish, calls)
    assert calls, body
    if not body["parallel_tool_calls"]:
        assert len(calls) == 1
    if isinstance(body["tool_choice"], dict):
        assert {name for name, _ in calls} == {body["tool_choice"]["function"]["name"]}
    for name, arguments in calls:
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


async def test_every_forced_call_parses_and_validates_on_both_paths(stack):
    apis = {"both": client(stack["both"], True), "router": client(stack["router"], True)}
    jobs = [(apis["both" if i % 2 else "router"], request(i), i % 4 >= 2) for i in range(200)]
    results = await asyncio.gather(*(tool_calls_of(api, body, stream)
                                     for api, body, stream in jobs))
    for (_, body, stream), (finish, calls) in zip(jobs, results, strict=True):
        check_calls(body, finish, calls, stream)


async def test_through_the_router_calls_equal_one_workers_calls(stack):
    bodies = [request(i) for i in range(1, 48, 2)]  # greedy ones
    assert all(body["temperature"] == 0 for body in bodies)
    both, routed = client(stack["both"], True), client(stack["router"], True)
    alone = await asyncio.gather(*(tool_calls_of(both, body, False) for body in bodies))
    split = await asyncio.gather(*(tool_calls_of(routed, body, False) for body in bodies))
    assert split == alone


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_validates(stack, stream):
    api = client(stack["router"])
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER,
                                                  "strict": True}}
    for i in range(20):
        body = {"model": "tiny", "messages": [{"role": "user", "content": QUESTIONS[i % 6]}],
                "response_format": fmt, "max_tokens": MAX_TOKENS, "temperature": 0.7,
                "seed": i}
        if stream:
            text = "".join(chunk.choices[0].delta.content or "" for chunk in
                           api.chat.completions.create(**body, stream=True) if chunk.choices)
        else:
            text = api.chat.completions.create(**body).choices[0].message.content
        jsonschema.validate(json.loads(text), ANSWER)


def test_json_object_mode_gives_an_object(stack):
    # Any object: its strings are unbounded, so random weights may run out of tokens first.
    api = client(stack["both"])
    finished = 0
    for i in range(10):
        choice = api.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": QUESTIONS[i % 6]}],
            response_format={"type": "json_object"}, max_tokens=MAX_TOKENS, temperature=0.7,
            seed=i).choices[0]
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
            finished += 1
    assert finished >= 5


class Answer(BaseModel):
    answer: str = Field(max_length=20)
    mood: Literal["happy", "sad"]
    score: int = Field(ge=0, le=10)


def test_openai_parse_helper_returns_the_model(stack):
    parsed = client(stack["router"]).chat.completions.parse(
        model="tiny", messages=[{"role": "user", "content": "How are you?"}],
        response_format=Answer, max_tokens=MAX_TOKENS, temperature=0)
    assert isinstance(parsed.choices[0].message.parsed, Answer)


class GetWeather(BaseModel):
    city: str = Field(max_length=16)
    unit: Literal["celsius", "fahrenheit"]


def test_openai_pydantic_function_tool_parses(stack):
    tool = openai.pydantic_function_tool(GetWeather)
    parsed = client(stack["both"]).chat.completions.parse(
        model="tiny", messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[tool], tool_choice="required", parallel_tool_calls=False, max_tokens=MAX_TOKENS,
        temperature=0)
    [call] = parsed.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_auto_allows_text_or_valid_calls(stack):
    api = client(stack["both"])
    for i in range(12):
        result = api.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": QUESTIONS[i % 6]}],
            tools=TOOLS, max_tokens=64, temperature=1.0, seed=i)
        for call in result.choices[0].message.tool_calls or []:
            jsonschema.validate(json.loads(call.function.arguments),
                                SCHEMAS[call.function.name])


@pytest.mark.parametrize(("fields", "message"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope'"),
    ({"tools": None, "tool_choice": "required"}, "needs at least one tool"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "wrong"}}}}}],
      "tool_choice": "required"}, "tools[0].function.parameters: cannot constrain"),
    ({"response_format": {"type": "json_schema"}}, "needs a json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}}}},
     "response_format: cannot constrain"),
])
def test_bad_constraints_are_400_naming_the_problem(stack, fields, message):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
            "max_tokens": 8, **fields}
    body = {key: value for key, value in body.items() if value is not None}
    with pytest.raises(openai.BadRequestError) as caught:
        client(stack["both"]).chat.completions.create(**body)
    assert message in caught.value.body["message"], caught.value.body


def test_no_blocks_leak(stack):
    for name in ("both", "prefill", "decode"):
        stats = engine_debug(stack[name])
        assert stats["num_free_blocks"] == stats["num_blocks"], (name, stats)
