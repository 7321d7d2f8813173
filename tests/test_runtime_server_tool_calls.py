"""Tool calls end to end: a real worker serving a model scripted to answer with a hermes
`<tool_call>` block (tests/runtime_scripted_model.py), read with the official `openai` client."""

from __future__ import annotations

import json

import openai
import pytest
from runtime_scripted_model import write_scripted_model
from runtime_worker_process import MODEL_NAME, WorkerProcess, tiny_model_dir

from pdserve.runtime.checkpoints.tokenizer import Tokenizer

CONTENT = "Checking the weather."
# No space in {"city":"Paris"}: the scripted model needs each token pair to recur at most once.
SCRIPT = (CONTENT + '\n<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n'
          "</tool_call>")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tiny = tiny_model_dir(tmp_path_factory)
    tokenizer = Tokenizer(tiny)
    eos = tokenizer.token_to_id("<|im_end|>")
    model = write_scripted_model(tiny, tmp_path_factory.mktemp("scripted"),
                                 "<|im_start|>assistant\n", [*tokenizer.encode(SCRIPT), eos])
    worker = WorkerProcess(model, "--num-kv-blocks", "64",
                           log_path=tmp_path_factory.mktemp("logs") / "tools.log")
    try:
        worker.wait_ready()
        yield openai.OpenAI(base_url=worker.base_url + "/v1", api_key="unused", max_retries=0)
    finally:
        worker.stop()


def test_without_tools_the_model_output_is_plain_content(client):
    result = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                            temperature=0, max_tokens=100)
    choice = result.choices[0]
    assert choice.message.content == SCRIPT
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"


def test_tool_call_is_returned_as_tool_calls(client):
    result = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                            tools=[WEATHER_TOOL], temperature=0, max_tokens=100)
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == CONTENT
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_streamed_tool_call_arrives_as_delta_tool_calls(client):
    stream = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                            tools=[WEATHER_TOOL], temperature=0, max_tokens=100,
                                            stream=True)
    content, calls, finish_reasons = "", {}, []
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": call.id, "name": "", "arguments": ""})
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
        if chunk.choices[0].finish_reason:
            finish_reasons.append(chunk.choices[0].finish_reason)
    assert "<tool" not in content and content.strip() == CONTENT
    assert finish_reasons == ["tool_calls"]
    assert list(calls) == [0] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert calls[0]["id"].startswith("call_")
