"""`pdserve model init`, builtin model resolution, the trained tokenizer and its chat template."""

from __future__ import annotations

import hashlib
import json

import pytest
from transformers import AutoTokenizer

from pdserve.cli import main as pdserve_main
from pdserve.runtime.checkpoints.builtin import init_model, resolve_model_path
from pdserve.runtime.checkpoints.tokenizer import ChatTemplateError, Tokenizer
from pdserve.runtime.checkpoints.tokenizer_training import train_tokenizer_json


def _digests(path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_model_init_is_deterministic(tmp_path):
    a = init_model(tmp_path / "a", "tiny", "qwen3")
    b = init_model(tmp_path / "b", "tiny", "qwen3")
    assert _digests(a) == _digests(b)
    names = set(_digests(a))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names  # fmt: skip


def test_tokenizer_training_is_deterministic():
    # Both trainings here, not one cached by an earlier test: the corpus reads the attributes of
    # standard-library modules, which grow as a process imports their submodules.
    train_tokenizer_json.cache_clear()
    first = train_tokenizer_json(4096)
    train_tokenizer_json.cache_clear()
    assert train_tokenizer_json(4096) == first


def test_cli_writes_a_model(tmp_path, capsys):
    assert pdserve_main(["model", "init", str(tmp_path / "m"), "--family", "qwen2"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is True
    assert pdserve_main(["model", "init", str(tmp_path / "s"), "--max-shard-mb", "0.5"]) == 0
    assert (tmp_path / "s" / "model.safetensors.index.json").is_file()
    with pytest.raises(SystemExit):
        pdserve_main(["model", "init", str(tmp_path / "x"), "--preset", "huge"])
    assert "invalid choice" in capsys.readouterr().err


def test_builtin_tiny_is_generated_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PDSERVE_MODEL_CACHE", str(tmp_path))
    path = resolve_model_path("builtin:tiny")
    assert path == tmp_path / "tiny" and (path / "config.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("builtin:tiny") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="unknown builtin"):
        resolve_model_path("builtin:huge")
    with pytest.raises(ValueError, match=r"no config\.json"):
        resolve_model_path(str(tmp_path / "nowhere"))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("tok"), "tiny", "llama")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return Tokenizer(tokenizer_dir)


def test_tokenizer_round_trips_text_and_special_tokens(tokenizer):
    text = "héllo wörld ✓ <|im_start|>user\nhi<|im_end|> <tool_call>{}</tool_call>"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.token_to_id("<|im_end|>") in ids
    assert tokenizer.token_to_id("<tool_call>") in ids  # one token each
    assert "<|im_end|>" not in tokenizer.decode(ids)  # special: skipped
    assert "<tool_call>" in tokenizer.decode(ids)  # not special: kept for tool-call parsing
    assert tokenizer.token_to_id("<|im_end|>") in tokenizer.eos_token_ids
    assert tokenizer.vocab_size == 4096


def test_chat_template_renders_chatml_and_tools(tokenizer, tokenizer_dir):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = tokenizer.apply_chat_template(messages)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]  # fmt: skip
    prompt = tokenizer.apply_chat_template(history, tools=tools)
    assert '"name": "get_weather"' in prompt and "<tools>" in prompt
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        in prompt
    )
    assert "<tool_response>\nsunny\n</tool_response>" in prompt
    assert "Weather in Paris?" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    plain = [{"role": "user", "content": "Weather in Paris?"}, *history[1:]]  # no content parts
    rendered = hf.apply_chat_template(
        plain, tools=tools, tokenize=False, add_generation_prompt=True
    )
    assert rendered == prompt  # same template semantics as transformers
    assert hf.encode(prompt, add_special_tokens=False) == tokenizer.encode(prompt)
    with pytest.raises(ChatTemplateError, match="unknown message role"):
        tokenizer.apply_chat_template([{"role": "wizard", "content": "x"}])
