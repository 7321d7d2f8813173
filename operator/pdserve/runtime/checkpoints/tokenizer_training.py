"""Training the built-in models' tokenizer: a byte-level BPE learned deterministically, offline,
from a fixed corpus (the docstrings of a fixed list of standard-library modules, in a fixed
order, plus a few chat and tool-call samples), with ChatML special tokens.
"""

from __future__ import annotations

import importlib
import inspect
import json
import warnings
from functools import lru_cache

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Not "special": they must survive decoding so tool calls can be parsed from the text.
TOOL_TOKENS = ("<tool_call>", "</tool_call>")

_CORPUS_MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum",
    "fractions", "functools", "heapq", "html", "http.client", "inspect", "io", "itertools",
    "json", "logging", "math", "os", "pathlib", "pickle", "random", "re", "shutil", "socket",
    "statistics", "string", "subprocess", "textwrap", "threading", "typing", "unittest",
    "urllib.parse", "uuid", "zipfile",
)  # fmt: skip

_CHAT_SAMPLES = (
    "Hello! How can I help you today?",
    "What is the weather like in Paris? Let me check the forecast for you.",
    'A tool call: {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    "The answer is 42. Is there anything else you would like to know?",
)


def corpus() -> list[str]:
    """The training texts, in a fixed order."""
    texts = list(_CHAT_SAMPLES)
    with warnings.catch_warnings():  # some stdlib attributes warn on access (typing.io, ...)
        warnings.simplefilter("ignore")
        _add_docstrings(texts)
    texts.append(json.dumps({"messages": list(_CHAT_SAMPLES)}))
    return texts


def _add_docstrings(texts: list[str]) -> None:
    for module_name in _CORPUS_MODULES:
        module = importlib.import_module(module_name)
        texts.append(inspect.getdoc(module) or "")
        for name in sorted(vars(module)):
            if name.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, name))
            if doc:
                texts.append(f"{module_name}.{name}: {doc}")


@lru_cache(maxsize=4)
def train_tokenizer_json(vocab_size: int = 4096) -> str:
    """The serialized tokenizer.json of the byte-level BPE trained on `corpus()`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TOOL_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    return str(tokenizer.to_str(pretty=True))
