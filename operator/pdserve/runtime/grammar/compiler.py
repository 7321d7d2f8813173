"""Compiling grammars for one model's vocabulary with xgrammar, cached by their spec string.

xgrammar reads a vocabulary as byte-level (GPT-2 style) or SentencePiece pieces; it is told
which from the tokenizer.json itself. Special tokens other than the stop tokens are given as
empty strings, which xgrammar never allows, and so are tokens holding a C0 control character
other than tab, newline and carriage return (JSON forbids them raw and no text needs them) and
tokens holding a byte that UTF-8 never uses (C0, C1, F5-FF). xgrammar's UTF-8 rules also let an
overlong or surrogate sequence through (E0 80, ED A0, F0 80, F4 90): `GrammarState` narrows the
byte after those four lead bytes itself.
xgrammar is imported on first use (it brings transformers along): workers that never see a
constrained request do not pay for it.
"""

from __future__ import annotations

import threading
from typing import Any

from pdserve.runtime.grammar.spec import GrammarError

DEFAULT_COMPILE_TIMEOUT = 10.0  # seconds a request's grammar may take to compile
_FORBIDDEN_CONTROL = {chr(code) for code in range(32)} - {"\t", "\n", "\r"}
_NOT_UTF8 = {0xC0, 0xC1, *range(0xF5, 0x100)}
# Lead bytes whose next byte is narrower than 80-BF, and that range.
_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def load_xgrammar() -> Any:
    import xgrammar

    return xgrammar


class GrammarCompiler:
    """Thread-safe: the server compiles ahead on its threads, the engine looks up the cache."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: set[int],
                 cache_bytes: int) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_token_ids = sorted(stop_token_ids)
        self._cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self._compiler: Any = None
        self.token_bytes: list[bytes] = []  # each token's bytes (empty: never generated)
        # For each of _SECOND_BYTE's leads: the tokens starting with a byte it does not allow.
        self.not_after_lead: dict[int, list[int]] = {}

    def _get(self) -> Any:
        with self._lock:
            if self._compiler is None:
                xgr = load_xgrammar()
                self._compiler = xgr.GrammarCompiler(
                    self._tokenizer_info(xgr), max_threads=2,
                    cache_limit_bytes=self._cache_bytes)
            return self._compiler

    def _tokenizer_info(self, xgr: Any) -> Any:
        backend = self._tokenizer.backend
        vocab = [""] * self._vocab_size
        for token, token_id in backend.get_vocab(with_added_tokens=True).items():
            if token_id < self._vocab_size:
                vocab[token_id] = token
        special = set(self._tokenizer.special_token_ids) - set(self._stop_token_ids)
        for token_id in range(min(self._vocab_size, backend.get_vocab_size())):
            text = backend.decode([token_id], skip_special_tokens=False)
            if token_id in special or _FORBIDDEN_CONTROL & set(text):
                vocab[token_id] = ""
        metadata = xgr.TokenizerInfo._detect_metadata_from_hf(backend.to_str())

        def info() -> Any:
            return xgr.TokenizerInfo(vocab, metadata["vocab_type"], vocab_size=self._vocab_size,
                                     stop_token_ids=self._stop_token_ids,
                                     add_prefix_space=metadata["add_prefix_space"])

        decoded = list(info().decoded_vocab)
        for token_id, data in enumerate(decoded):
            if _NOT_UTF8.intersection(data):
                vocab[token_id] = ""
                decoded[token_id] = b""
        self.token_bytes = decoded + [b""] * (self._vocab_size - len(decoded))
        self.not_after_lead = {
            lead: [token_id for token_id, data in enumerate(self.token_bytes)
                   if data and 0x80 <= data[0] <= 0xBF and not low <= data[0] <= high]
            for lead, (low, high) in _SECOND_BYTE.items()}
        return info()

    def warm_up(self) -> None:
        """Build the vocabulary tables now (seconds for a large vocabulary), not on a request."""
        self._get()

    def compile(self, spec: str) -> Any:
        """The compiled grammar of a `spec.py` string; GrammarError when it cannot be built."""
        compiler = self._get()
        try:
            return compiler.compile_structural_tag(spec)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise GrammarError(_first_line(exc)) from None

    def start(self, spec: str) -> GrammarState:
        """A request's state at the start of the grammar of `spec`."""
        return GrammarState(load_xgrammar().GrammarMatcher(self.compile(spec)), self)


class GrammarState:
    """Where one request is in its grammar: xgrammar's matcher, and a lead byte left open by
    the last token when that lead narrows the next byte (see the module docstring)."""

    def __init__(self, matcher: Any, compiler: GrammarCompiler) -> None:
        self.matcher = matcher
        self.compiler = compiler
        self.open_lead: int | None = None

    def accept(self, token_id: int) -> bool:
        """Advance over a generated token; False if the grammar does not allow it."""
        if not self.matcher.accept_token(token_id):
            return False
        data = self.compiler.token_bytes[token_id] if token_id < len(
            self.compiler.token_bytes) else b""
        if data:
            self.open_lead = data[-1] if data[-1] in _SECOND_BYTE else None
        return True

    def banned_next(self) -> list[int]:
        """Tokens the grammar would allow next that would make the UTF-8 invalid."""
        return self.compiler.not_after_lead[self.open_lead] if self.open_lead else []

    def is_terminated(self) -> bool:
        return bool(self.matcher.is_terminated())


def _first_line(exc: Exception) -> str:
    # xgrammar's C++ errors start with "[time] file:line: "; the message is what follows.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("[") and ": " in text:
        text = text.split(": ", 1)[1]
    return text
