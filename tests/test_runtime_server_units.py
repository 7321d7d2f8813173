"""Pure-logic tests of the worker server: tool-call parsing, request validation, settings."""

import json

import pytest

from pdserve.runtime.cli import WorkerSetupError, parse_settings
from pdserve.runtime.serving.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
    parse_priority,
    parse_request,
)
from pdserve.runtime.serving.openai_serving import resolve_max_tokens
from pdserve.runtime.serving.tool_calls import ToolCallParser, parse_tool_calls

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_tool_call_is_parsed_out_of_the_text():
    content, calls = parse_tool_calls("Let me check.\n" + CALL + "\n")
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})]
    assert calls[0].to_openai()["id"].startswith("call_")


def test_several_calls_and_no_content():
    content, calls = parse_tool_calls(CALL + "\n" + CALL.replace("Paris", "Oslo"))
    assert content is None
    assert [c.index for c in calls] == [0, 1]
    assert json.loads(calls[1].arguments) == {"city": "Oslo"}


def test_text_without_calls_is_untouched():
    assert parse_tool_calls("a < b and <tool> tags") == ("a < b and <tool> tags", [])


def test_malformed_call_stays_content():
    text = "<tool_call>{not json}</tool_call>"
    assert parse_tool_calls(text) == (text, [])


def test_unterminated_call_at_the_end_still_counts():
    _, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}')
    assert [c.name for c in calls] == ["f"]


@pytest.mark.parametrize("piece", [1, 2, 5, 11])
def test_streaming_in_any_pieces_matches_the_whole(piece):
    text = "Sure <b>. " + CALL + "\nbye"
    parser = ToolCallParser()
    content, calls = "", []
    for start in range(0, len(text), piece):
        events = parser.feed(text[start:start + piece])
        assert "<tool" not in events.content and "tool_call>" not in events.content
        content += events.content
        calls += events.tool_calls
    tail = parser.finish()
    content += tail.content
    calls += tail.tool_calls
    assert content == "Sure <b>. bye"
    assert [c.name for c in calls] == ["get_weather"]


def body(**fields):
    return json.dumps(fields).encode()


@pytest.mark.parametrize("fields, param", [
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "temperature": -0.5}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "n": 2}, "n"),
    ({}, "prompt"),
])
def test_bad_completion_parameters_name_the_field(fields, param):
    with pytest.raises(RequestError) as err:
        parse_request(CompletionRequest, body(**fields))
    assert err.value.param == param and err.value.status == 400


def test_malformed_json_and_non_objects_are_request_errors():
    for raw in (b"{", b"[1, 2]", b"\xff"):
        with pytest.raises(RequestError):
            parse_request(CompletionRequest, raw)


def test_unknown_fields_are_ignored():
    request = parse_request(CompletionRequest, body(prompt="x", user="u", store=True))
    assert request.single_prompt() == "x"


def test_chat_messages_render_for_templates():
    request = parse_request(ChatCompletionRequest, body(messages=[
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]))
    rendered = [m.for_template() for m in request.messages]
    assert rendered[0] == {"role": "system", "content": "be brief"}
    assert rendered[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert rendered[2]["tool_call_id"] == "c1"


def test_forced_tool_choice_is_refused_clearly():
    with pytest.raises(RequestError, match="tool_choice"):
        parse_request(ChatCompletionRequest, body(messages=[{"role": "user", "content": "x"}],
                                                  tool_choice="required"))


def test_priority_header_wins_and_must_be_an_integer():
    assert parse_priority(None, None) == 0
    assert parse_priority(None, 3) == 3
    assert parse_priority(" -2 ", 3) == -2
    with pytest.raises(RequestError, match="x-pdserve-priority"):
        parse_priority("high", None)


def test_max_tokens_must_fit_the_context():
    assert resolve_max_tokens(None, 16, 10, 100, "prompt") == 16
    assert resolve_max_tokens(None, 16, 90, 100, "prompt") == 10
    assert resolve_max_tokens(None, None, 90, 100, "messages") == 10
    with pytest.raises(RequestError, match="context length") as err:
        resolve_max_tokens(20, 16, 90, 100, "prompt")
    assert err.value.param == "max_tokens"
    with pytest.raises(RequestError, match="100 tokens") as err:
        resolve_max_tokens(None, 16, 100, 100, "prompt")
    assert err.value.code == "context_length_exceeded"


def test_settings_flags_override_the_config_file(tmp_path):
    config = tmp_path / "engine.json"
    config.write_text(json.dumps({"maxNumSeqs": 8, "block_size": 32, "enable-prefix-caching": False,
                                  "kvFallback": "fail", "numKvBlocks": None}))
    settings = parse_settings(["--config", str(config), "--model", "builtin:tiny",
                               "--block-size", "16"])
    assert settings["max_num_seqs"] == 8
    assert settings["block_size"] == 16
    assert settings["enable_prefix_caching"] is False
    assert settings["kv_fallback"] == "fail"
    assert settings["num_kv_blocks"] is None
    assert settings["served_model_name"] == "builtin:tiny"
    assert settings["role"] == "both" and settings["port"] == 8000


@pytest.mark.parametrize("content, message", [
    ({"colour": "blue"}, "unknown setting 'colour'"),
    ({"blockSize": True}, "not an on/off setting"),
    ("[1]", "JSON object"),
])
def test_bad_config_files_are_clear_errors(tmp_path, content, message):
    config = tmp_path / "engine.json"
    config.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(WorkerSetupError, match=message):
        parse_settings(["--config", str(config), "--model", "m"])


def test_config_values_are_checked_like_flags(tmp_path, capsys):
    config = tmp_path / "engine.json"
    config.write_text(json.dumps({"max_num_seqs": 0}))
    with pytest.raises(SystemExit):
        parse_settings(["--config", str(config), "--model", "m"])
    assert "--max-num-seqs" in capsys.readouterr().err


def test_model_is_required():
    with pytest.raises(WorkerSetupError, match="--model is required"):
        parse_settings([])


def test_tensor_parallelism_is_taken_by_every_role():
    for role in ("both", "prefill", "decode"):
        assert parse_settings(["--model", "m", "--role", role, "--tensor-parallel-size", "2"])[
            "tensor_parallel_size"] == 2
