"""The real `pdserve worker --role both` driven by the official `openai` client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest
from runtime_worker_process import MODEL_NAME, WorkerProcess, metric_value, tiny_model_dir

from pdserve.runtime.checkpoints.tokenizer import Tokenizer

GREEDY = {"temperature": 0.0}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def worker(model_dir, tmp_path_factory):
    # One sequence at a time: the priority test below needs the worker saturated.
    process = WorkerProcess(model_dir, "--max-model-len", "512", "--num-kv-blocks", "128",
                            "--block-size", "16", "--max-num-seqs", "1",
                            log_path=tmp_path_factory.mktemp("logs") / "worker.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(worker):
    return openai.OpenAI(base_url=worker.base_url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list()] == [MODEL_NAME]


def test_completion_counts_tokens_and_stops_at_max_tokens(client):
    result = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=7,
                                       extra_body={"ignore_eos": True}, **GREEDY)
    choice = result.choices[0]
    assert choice.finish_reason == "length" and choice.text
    assert result.usage.completion_tokens == 7
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + 7


def test_greedy_streaming_matches_non_streaming(client):
    request = {"model": MODEL_NAME, "prompt": "The quick brown fox", "max_tokens": 12,
               "extra_body": {"ignore_eos": True}, **GREEDY}
    whole = client.completions.create(**request).choices[0].text
    chunks = list(client.completions.create(stream=True, **request))
    assert "".join(chunk.choices[0].text for chunk in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_strings_end_the_output_before_them(client):
    request = {"model": MODEL_NAME, "prompt": "Stop here", "max_tokens": 16,
               "extra_body": {"ignore_eos": True}, **GREEDY}
    whole = client.completions.create(**request).choices[0].text
    stop = whole[len(whole) // 2:][:3]
    assert stop.strip()
    result = client.completions.create(stop=[stop], **request).choices[0]
    assert result.finish_reason == "stop"
    assert result.text == whole[:whole.index(stop)]


def test_token_id_prompts_and_logprobs(client):
    result = client.completions.create(model=MODEL_NAME, prompt=[5, 6, 7, 8], max_tokens=3,
                                       logprobs=2, extra_body={"ignore_eos": True}, **GREEDY)
    logprobs = result.choices[0].logprobs
    assert result.usage.prompt_tokens == 4
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 3
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert all(value <= 0 for value in logprobs.token_logprobs)


def test_chat_and_chat_streaming(client):
    request = {"model": MODEL_NAME, "max_tokens": 10,
               "messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Say hello"}],
               "extra_body": {"ignore_eos": True}, **GREEDY}
    result = client.chat.completions.create(**request)
    message = result.choices[0].message
    assert message.role == "assistant" and message.content
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 10

    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                            **request)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices


def test_chat_logprobs(client):
    result = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True}, **GREEDY)
    content = result.choices[0].logprobs.content
    assert len(content) == 4
    assert all(len(item.top_logprobs) == 3 for item in content)
    # Greedy: the chosen token is the most likely one.
    assert all(item.logprob >= max(t.logprob for t in item.top_logprobs) - 1e-5
               for item in content)


def test_tools_are_rendered_into_the_prompt(client, model_dir):
    """The prompt the server builds is the chat template rendered with the tools."""
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    plain = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=1)
    with_tools = client.chat.completions.create(model=MODEL_NAME, messages=messages,
                                                max_tokens=1, tools=[WEATHER_TOOL])
    tokenizer = Tokenizer(model_dir)
    expected = tokenizer.encode(tokenizer.apply_chat_template(messages, tools=[WEATHER_TOOL]))
    assert with_tools.usage.prompt_tokens == len(expected)
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens
    none = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=1,
                                          tools=[WEATHER_TOOL], tool_choice="none")
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens


def test_tool_results_in_the_conversation_are_accepted(client):
    result = client.chat.completions.create(model=MODEL_NAME, max_tokens=2, tools=[WEATHER_TOOL],
                                            messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ])
    assert result.usage.completion_tokens >= 1


@pytest.mark.parametrize("urgent", [{"extra_headers": {"x-pdserve-priority": "-5"}},
                                    {"extra_body": {"priority": -5}}])
def test_an_urgent_request_overtakes_a_running_one(worker, client, urgent):
    """With one sequence slot busy, a more urgent request (header or body) runs first."""
    background = client.completions.create(
        model=MODEL_NAME, prompt="long low priority story", max_tokens=300, stream=True,
        extra_headers={"x-pdserve-priority": "5"}, extra_body={"ignore_eos": True})
    first = next(iter(background))
    assert first.choices[0].finish_reason is None
    result = client.completions.create(model=MODEL_NAME, prompt="urgent", max_tokens=2,
                                       **{**urgent, "extra_body": {
                                           **urgent.get("extra_body", {}), "ignore_eos": True}})
    assert result.usage.completion_tokens == 2
    stats = worker.get_json("/debug/engine")  # the low-priority request is not done yet...
    assert stats["num_running"] + stats["num_waiting"] == 1
    rest = list(background)  # ...and completes afterwards
    assert rest and rest[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("request_options, param", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 2}, "n"),
    ({"model": "no-such-model"}, "model"),
    ({"prompt": "word " * 600}, "prompt"),
    ({"max_tokens": 500, "prompt": "word " * 20}, "max_tokens"),
    ({"prompt": [999999]}, "prompt"),
    ({"extra_headers": {"x-pdserve-priority": "urgent"}}, "x-pdserve-priority"),
])
def test_bad_completion_requests_are_400_with_an_openai_error(client, request_options, param):
    request = {"model": MODEL_NAME, "prompt": "hello", "max_tokens": 2, **request_options}
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(**request)
    error = err.value.body
    assert err.value.status_code == 400
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"]


@pytest.mark.parametrize("request_options, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
     "messages"),
    ({"messages": [{"role": "user", "content": "word " * 600}]}, "messages"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}},
      "tools": [WEATHER_TOOL]}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
     "messages"),
])
def test_bad_chat_requests_are_400_with_an_openai_error(client, request_options, param):
    request = {"model": MODEL_NAME, "max_tokens": 2,
               "messages": [{"role": "user", "content": "hi"}], **request_options}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**request)
    assert err.value.body["param"] == param


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'{"prompt": "x", "stream": "maybe"}'])
def test_malformed_bodies_are_400(worker, raw):
    request = urllib.request.Request(worker.base_url + "/v1/completions", data=raw,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 400
    assert json.loads(err.value.read())["error"]["type"] == "invalid_request_error"


def test_health_ready_and_metrics(worker, client):
    client.completions.create(model=MODEL_NAME, prompt="count me", max_tokens=2,
                              extra_body={"ignore_eos": True})
    assert worker.get_status("/health") == 200
    assert worker.get_status("/ready") == 200
    text = worker.metrics_text()
    labels = {"role": "both", "model": MODEL_NAME}
    for name in ("pdserve_requests_waiting", "pdserve_requests_running",
                 "pdserve_kv_usage_ratio", "pdserve_prefix_cache_queries_total",
                 "pdserve_prefix_cache_hits_total", "pdserve_kv_transfer_bytes_total",
                 "pdserve_kv_transfer_failures_total", "pdserve_kv_transfer_fallbacks_total"):
        assert f"{name}{{" in text, name
    assert metric_value(text, "pdserve_prompt_tokens_total", **labels) > 0
    assert metric_value(text, "pdserve_generation_tokens_total", **labels) >= 2
    assert metric_value(text, "pdserve_requests_total", finish_reason="length", **labels) >= 1
    for name in ("pdserve_time_to_first_token_seconds", "pdserve_inter_token_latency_seconds",
                 "pdserve_e2e_request_latency_seconds", "pdserve_kv_transfer_seconds"):
        assert f"{name}_bucket{{" in text, name
    assert metric_value(text, "pdserve_time_to_first_token_seconds_count", **labels) >= 1


def test_repeated_prompt_hits_the_prefix_cache(worker, client):
    prompt = "A long shared system prompt that spans several KV blocks. " * 4
    labels = {"role": "both", "model": MODEL_NAME}
    before = metric_value(worker.metrics_text(), "pdserve_prefix_cache_hits_total", **labels)
    for _ in range(2):
        result = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1)
    after = metric_value(worker.metrics_text(), "pdserve_prefix_cache_hits_total", **labels)
    assert after - before >= 16
    assert result.usage.prompt_tokens_details.cached_tokens >= 16
