"""Incremental detokenization with stop strings.

Text is produced by decoding a short window of tokens and taking the difference, so a multi-byte
character split over tokens is emitted only once complete (no U+FFFD in the stream). Text that
could still turn into a stop string is held back until it cannot; a matched stop string and
everything after it is never emitted.
"""

from __future__ import annotations

from pdserve.runtime.checkpoints.tokenizer import Tokenizer

# Prompt tokens decoded as left context, so the first output token decodes as it would in place.
_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int], stop: list[str]):
        self.tokenizer = tokenizer
        self.token_ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        self.stop = list(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""  # all output text decoded so far
        self.emitted = 0  # characters of self.text already returned
        self.stopped = False

    def _decode_new(self) -> str:
        decode = self.tokenizer.decode
        prefix = decode(self.token_ids[self.prefix_offset : self.read_offset])
        full = decode(self.token_ids[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        return full[len(prefix) :]

    def add_tokens(self, token_ids: list[int], finished: bool) -> str:
        """Feed new tokens; returns the text that may be emitted now. Sets `stopped` on a match."""
        if self.stopped:
            return ""
        self.token_ids.extend(token_ids)
        search_from = max(0, len(self.text) - self.hold)
        self.text += self._decode_new()
        for stop in self.stop:
            index = self.text.find(stop, search_from)
            if index != -1:
                self.text = self.text[:index]
                self.stopped = True
        end = len(self.text) if finished or self.stopped else len(self.text) - self.hold
        if end <= self.emitted:
            return ""
        chunk = self.text[self.emitted : end]
        self.emitted = end
        return chunk
