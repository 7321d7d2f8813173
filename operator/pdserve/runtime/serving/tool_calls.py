"""Hermes-style tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in the text.

One incremental parser serves both paths: streaming feeds it each text delta and turns its events
into `delta.content` / `delta.tool_calls`; non-streaming feeds the whole text once. Text that
might be the start of a `<tool_call>` tag is held back until it is known not to be one, so no tag
fragment ever leaks into `content`. A block whose body is not a JSON object with a string `name`
is passed through as plain content rather than failing the request.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


@dataclass
class ParsedToolCall:
    index: int
    name: str
    arguments: str  # a JSON string, as OpenAI returns it
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}

    def to_delta(self) -> dict[str, Any]:
        return {"index": self.index, **self.to_openai()}


@dataclass
class ToolCallEvents:
    """What one `feed` produced: plain text and completed tool calls, in order of appearance."""

    content: str = ""
    tool_calls: list[ParsedToolCall] = field(default_factory=list)


def _decode_call(body: str) -> tuple[str, str] | None:
    try:
        call = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        return call["name"], arguments
    return call["name"], json.dumps(arguments, ensure_ascii=False)


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


class ToolCallParser:
    def __init__(self) -> None:
        self._buffer = ""
        self._inside = False
        self._after_call = False
        self.tool_calls: list[ParsedToolCall] = []

    def feed(self, text: str) -> ToolCallEvents:
        self._buffer += text
        events = ToolCallEvents()
        while True:
            if self._inside:
                end = self._buffer.find(CLOSE_TAG)
                if end < 0:
                    return events
                self._close_call(self._buffer[:end], events)
                self._buffer = self._buffer[end + len(CLOSE_TAG):]
                self._inside = False
                continue
            start = self._buffer.find(OPEN_TAG)
            if start >= 0:
                self._emit_content(self._buffer[:start], events)
                self._buffer = self._buffer[start + len(OPEN_TAG):]
                self._inside = True
                continue
            keep = _partial_tag_suffix(self._buffer, OPEN_TAG)
            self._emit_content(self._buffer[:len(self._buffer) - keep], events)
            self._buffer = self._buffer[len(self._buffer) - keep:]
            return events

    def finish(self) -> ToolCallEvents:
        """Flush at the end of generation: an unterminated call still counts if it parses."""
        events = ToolCallEvents()
        if self._inside:
            self._close_call(self._buffer, events)
        else:
            self._emit_content(self._buffer, events)
        self._buffer = ""
        self._inside = False
        return events

    def _close_call(self, body: str, events: ToolCallEvents) -> None:
        decoded = _decode_call(body.strip())
        if decoded is None:
            self._emit_content(OPEN_TAG + body + CLOSE_TAG, events)
            return
        call = ParsedToolCall(index=len(self.tool_calls), name=decoded[0], arguments=decoded[1])
        self.tool_calls.append(call)
        events.tool_calls.append(call)
        self._after_call = True

    def _emit_content(self, text: str, events: ToolCallEvents) -> None:
        # Models put newlines between and after calls: that whitespace is not content.
        if self._after_call:
            text = text.lstrip()
            self._after_call = not text
        events.content += text


def parse_tool_calls(text: str) -> tuple[str | None, list[ParsedToolCall]]:
    """Split a complete generation into (content or None, tool calls)."""
    parser = ToolCallParser()
    content = parser.feed(text).content + parser.finish().content
    if parser.tool_calls:
        return (content.strip() or None), parser.tool_calls
    return content, []
