"""Model directories as current Hugging Face tooling saves them: the chat template in its own
file (`chat_template.jinja`, `additional_chat_templates/`), several EOS ids and sampling defaults
in `generation_config.json`, checked against what transformers does with the same directory and
through a real worker."""

from __future__ import annotations

import json
import shutil

import openai
import pytest
from runtime_worker_process import MODEL_NAME, WorkerProcess
from transformers import AutoTokenizer, GenerationConfig

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.checkpoints.generation import (
    GenerationConfigError,
    GenerationDefaults,
    read_generation_defaults,
)
from pdserve.runtime.checkpoints.tokenizer import ChatTemplateError, Tokenizer
from pdserve.runtime.serving.openai_protocol import ChatCompletionRequest
from pdserve.runtime.serving.openai_serving import sampling_params

PLAIN = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}" \
        "{% if add_generation_prompt %}[assistant] {% endif %}"
TOOLS = "TOOLS {{ tools | length }}: {% for m in messages %}{{ m.content }};{% endfor %}"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("builtin"), "tiny", "qwen3")


def _saved_by_transformers(builtin_dir, target, template):
    hf = AutoTokenizer.from_pretrained(builtin_dir)
    hf.chat_template = template
    hf.save_pretrained(target)
    for name in ("config.json", "generation_config.json"):
        shutil.copy(builtin_dir / name, target / name)
    return AutoTokenizer.from_pretrained(target)


def _render(tokenizer, **kwargs):
    return tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, **kwargs)


def test_a_template_saved_in_its_own_file_is_the_one_used(builtin_dir, tmp_path):
    hf = _saved_by_transformers(builtin_dir, tmp_path, PLAIN)
    assert (tmp_path / "chat_template.jinja").is_file()  # what transformers writes today
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "chat_template" not in config
    ours = Tokenizer(tmp_path)
    assert _render(ours) == _render(hf, tokenize=False) == \
        "[system] Be brief.\n[user] Hi there\n[assistant] "


def test_the_file_wins_over_tokenizer_config(builtin_dir, tmp_path):
    shutil.copytree(builtin_dir, tmp_path, dirs_exist_ok=True)  # chatml in tokenizer_config
    (tmp_path / "chat_template.jinja").write_text(PLAIN)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert _render(Tokenizer(tmp_path)) == _render(hf, tokenize=False)
    assert "<|im_start|>" not in _render(Tokenizer(tmp_path))


def test_named_templates_pick_tool_use_for_tools_as_transformers_does(builtin_dir, tmp_path):
    hf = _saved_by_transformers(builtin_dir, tmp_path, {"default": PLAIN, "tool_use": TOOLS})
    assert (tmp_path / "additional_chat_templates" / "tool_use.jinja").is_file()
    ours = Tokenizer(tmp_path)
    assert _render(ours) == _render(hf, tokenize=False)
    assert _render(ours, tools=[WEATHER]) == _render(hf, tools=[WEATHER], tokenize=False) == \
        "TOOLS 1: Be brief.;Hi there;"


def test_a_model_without_a_template_says_where_it_looked(builtin_dir, tmp_path):
    shutil.copytree(builtin_dir, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ChatTemplateError, match=r"no chat_template\.jinja"):
        _render(Tokenizer(tmp_path))


def test_a_template_that_does_not_parse_is_a_clear_error(builtin_dir, tmp_path):
    shutil.copytree(builtin_dir, tmp_path, dirs_exist_ok=True)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="does not parse"):
        _render(Tokenizer(tmp_path))


QWEN3_GENERATION = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                    "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95}


def _generation_dir(tmp_path, content):
    (tmp_path / "generation_config.json").write_text(json.dumps(content))
    return tmp_path


def test_the_model_cards_sampling_becomes_the_default(tmp_path):
    defaults = read_generation_defaults(_generation_dir(tmp_path, QWEN3_GENERATION))
    hf = GenerationConfig.from_pretrained(tmp_path)
    assert (defaults.temperature, defaults.top_p, defaults.top_k) == \
        (hf.temperature, hf.top_p, hf.top_k) == (0.6, 0.95, 20)
    omitted = ChatCompletionRequest.model_validate({"messages": MESSAGES})
    params = sampling_params(omitted, 16, None, defaults)
    assert (params.temperature, params.top_p, params.top_k) == (0.6, 0.95, 20)
    asked = ChatCompletionRequest.model_validate({"messages": MESSAGES, "temperature": 0,
                                                  "top_k": 0})
    params = sampling_params(asked, 16, None, defaults)
    assert (params.temperature, params.top_p, params.top_k) == (0.0, 0.95, 0)
    plain = sampling_params(omitted, 16, None, GenerationDefaults())
    assert (plain.temperature, plain.top_p, plain.top_k) == (1.0, 1.0, 0)  # OpenAI's


def test_do_sample_false_is_greedy_as_in_transformers(tmp_path):
    content = {"do_sample": False, "temperature": 0.7, "max_new_tokens": 64,
               "repetition_penalty": 1.1}
    defaults = read_generation_defaults(_generation_dir(tmp_path, content))
    assert defaults.temperature == 0.0 and defaults.top_p is None
    assert defaults.max_new_tokens == 64
    assert defaults.not_applied == ("repetition_penalty=1.1",)
    assert read_generation_defaults(tmp_path / "absent") == GenerationDefaults()


@pytest.mark.parametrize(("content", "message"), [
    ([1, 2], "JSON object"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"top_p": 0}, "top_p 0 is out of range"),
    ({"top_k": 2.5}, "top_k must be a number"),
])  # fmt: skip
def test_unusable_generation_configs_are_clear_errors(tmp_path, content, message):
    with pytest.raises(GenerationConfigError, match=message):
        read_generation_defaults(_generation_dir(tmp_path, content))


def test_several_eos_ids_all_stop_generation(builtin_dir, tmp_path):
    shutil.copytree(builtin_dir, tmp_path, dirs_exist_ok=True)
    _generation_dir(tmp_path, {"eos_token_id": [5, 7, 2]})
    assert {5, 7, 2} <= Tokenizer(tmp_path).eos_token_ids


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_worker_serves_a_directory_saved_by_current_transformers(builtin_dir, tmp_path):
    model = tmp_path / "model"
    hf = _saved_by_transformers(builtin_dir, model, PLAIN)
    _generation_dir(model, {"do_sample": False, "max_new_tokens": 6, "min_p": 0.05,
                            "eos_token_id": [2, 0]})
    shutil.copy(builtin_dir / "model.safetensors", model)
    worker = WorkerProcess(model, "--max-model-len", "256", "--num-kv-blocks", "32",
                           log_path=tmp_path / "worker.log")
    try:
        worker.wait_ready()
        client = openai.OpenAI(base_url=worker.base_url + "/v1", api_key="unused",
                               max_retries=0)
        answers = [client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                                  extra_body={"ignore_eos": True})
                   for _ in range(2)]
    finally:
        worker.stop()
    prompt = hf.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert answers[0].usage.prompt_tokens == len(hf.encode(prompt, add_special_tokens=False))
    assert answers[0].usage.completion_tokens == 6  # max_new_tokens as the default
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
    assert "sets min_p=0.05, which pdserve's sampler does not apply" in worker.log()
