"""The runtime's tokenizer: Hugging Face `tokenizer.json` through the `tokenizers` package, plus
`tokenizer_config.json` (special tokens, chat template) and `generation_config.json` (EOS ids).

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
        self.chat_template: str | None = self._pick_template(self.config.get("chat_template"))
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
        self.special_token_ids: frozenset[int] = frozenset(
            token_id
            for token_id, added in self._tok.get_added_tokens_decoder().items()
            if added.special
        )

    @staticmethod
    def _pick_template(raw: Any) -> str | None:
        if isinstance(raw, list):  # named templates: use "default"
            named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
            raw = named.get("default")
        return raw if isinstance(raw, str) else None

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
    def _template(self) -> jinja2.Template:
        if self.chat_template is None:
            raise ChatTemplateError("this model has no chat template in tokenizer_config.json")
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        return env.from_string(self.chat_template)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render a conversation (OpenAI-style message dicts) to the prompt text."""
        try:
            return self._template.render(
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
