"""The runtime's tokenizer: Hugging Face `tokenizer.json` through the `tokenizers` package, plus
`tokenizer_config.json` (special tokens, chat template), `generation_config.json` (EOS ids) and
the chat templates current transformers saves in files of their own.

Templates are found as transformers finds them: `chat_template.jinja` (the default) and
`additional_chat_templates/NAME.jinja` (named), which replace any `chat_template` in
`tokenizer_config.json` when present; that entry may be one string or a list of named templates.
A request with tools uses the template named `tool_use` where there is one, else the default.

Chat templates are rendered with jinja2 the way transformers does (sandboxed, trim_blocks and
lstrip_blocks, a `tojson` that does not HTML-escape, `raise_exception`), including `tools`.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer


class ChatTemplateError(ValueError):
    """The chat template refused the conversation (raise_exception) or failed to render."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        content = value.get("content")
        return content if isinstance(content, str) else None
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _normalise_message(message: dict[str, Any]) -> dict[str, Any]:
    # OpenAI content parts ([{"type": "text", "text": ...}]) become one string for the template.
    content = message.get("content")
    if isinstance(content, list):
        texts = [part.get("text", "") for part in content if isinstance(part, dict)]
        return {**message, "content": "".join(texts)}
    return message


DEFAULT_TEMPLATE = "default"
TOOL_USE_TEMPLATE = "tool_use"
TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_DIR = "additional_chat_templates"


def _chat_templates(root: Path, config: dict[str, Any]) -> dict[str, str]:
    """Named chat templates: the files when there are any, else tokenizer_config's entry."""
    files: dict[str, str] = {}
    if (root / TEMPLATE_FILE).is_file():
        files[DEFAULT_TEMPLATE] = (root / TEMPLATE_FILE).read_text(encoding="utf-8")
    if (root / TEMPLATE_DIR).is_dir():
        for path in sorted((root / TEMPLATE_DIR).glob("*.jinja")):
            files[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if files:
        return files
    raw = config.get("chat_template")
    if isinstance(raw, str):
        return {DEFAULT_TEMPLATE: raw}
    if isinstance(raw, list):
        return {entry["name"]: entry["template"] for entry in raw
                if isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("template"), str)}
    return {}


class Tokenizer:
    """Encode/decode text and render chat templates for one model directory."""

    def __init__(self, model_dir: str | Path):
        root = Path(model_dir)
        path = root / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"no tokenizer.json in model directory {str(root)!r}")
        self._tok = HFTokenizer.from_file(str(path))
        self.config = _read_json(root / "tokenizer_config.json")
        generation = _read_json(root / "generation_config.json")
        model_config = _read_json(root / "config.json")
        self.chat_templates: dict[str, str] = _chat_templates(root, self.config)
        self.bos_token = _token_text(self.config.get("bos_token"))
        self.eos_token = _token_text(self.config.get("eos_token"))
        eos_ids: set[int] = set()
        for source in (generation.get("eos_token_id"), model_config.get("eos_token_id")):
            if source is not None:
                eos_ids.update([source] if isinstance(source, int) else source)
        eos_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        if eos_id is not None:
            eos_ids.add(eos_id)
        self.eos_token_ids: frozenset[int] = frozenset(int(i) for i in eos_ids)
        self._compiled: dict[str, jinja2.Template] = {}
        self.special_token_ids: frozenset[int] = frozenset(
            token_id
            for token_id, added in self._tok.get_added_tokens_decoder().items()
            if added.special
        )

    @property
    def backend(self) -> HFTokenizer:
        """The `tokenizers` object itself (what grammar compilation reads the vocabulary from)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(token_ids, skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    @cached_property
    def _environment(self) -> ImmutableSandboxedEnvironment:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        return env

    def _template(self, with_tools: bool) -> jinja2.Template:
        name = TOOL_USE_TEMPLATE if with_tools and TOOL_USE_TEMPLATE in self.chat_templates \
            else DEFAULT_TEMPLATE
        if name not in self._compiled:
            source = self.chat_templates.get(name)
            if source is None:
                raise ChatTemplateError(
                    "this model has no chat template (no chat_template.jinja, no chat_template "
                    "in tokenizer_config.json)")
            try:
                self._compiled[name] = self._environment.from_string(source)
            except jinja2.TemplateError as exc:
                raise ChatTemplateError(f"chat template {name!r} does not parse: {exc}") from exc
        return self._compiled[name]

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render a conversation (OpenAI-style message dicts) to the prompt text."""
        template = self._template(with_tools=bool(tools))
        try:
            return template.render(
                messages=[_normalise_message(m) for m in messages],
                tools=tools or None,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                **extra,
            )
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc
