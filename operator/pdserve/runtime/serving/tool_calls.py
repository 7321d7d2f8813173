"""Hermes-style tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in the text.

One incremental parser serves both paths: streaming feeds it each text delta and turns its events
into `delta.content` / `delta.tool_calls`; non-streaming feeds the whole text once. Text that
might be the start of a `<tool_call>` tag is held back until it is known not to be one, so no tag
fragment ever leaks into `content`.

A call written as the grammar writes it (`{"name": "NAME", "arguments": ` first) streams: a delta
with its id and name as soon as the name is known, then the arguments as they are generated
(OpenAI's delta shape). Any other block is read whole at its closing tag; one whose body is not
a JSON object with a string `name` is passed through as plain content.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from pdserve.runtime.grammar.spec import TOOL_CALL_CLOSE as CLOSE_TAG
from pdserve.runtime.grammar.spec import TOOL_CALL_OPEN as OPEN_TAG

# The head of a call up to its arguments' value; the name is a JSON string.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')


@dataclass
class ParsedToolCall:
    index: int
    name: str
    arguments: str  # a JSON string, as OpenAI returns it
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolCallEvents:
    """What one `feed` produced: plain text, OpenAI `delta.tool_calls` entries, and the calls
    that completed."""

    content: str = ""
    deltas: list[dict[str, Any]] = field(default_factory=list)
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


class _ValueScanner:
    """Finds where one JSON object or array ends, a character at a time."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def feed(self, char: str) -> bool:
        """True when `char` closes the value."""
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = False
            return False
        if char == '"':
            self.in_string = True
        elif char in "{[":
            self.depth += 1
        elif char in "}]":
            self.depth -= 1
            return self.depth == 0
        return False


@dataclass
class _OpenCall:
    call: ParsedToolCall
    head: str  # the text before the arguments
    scanner: _ValueScanner = field(default_factory=_ValueScanner)
    complete: bool = False  # the arguments' value has closed


class ToolCallParser:
    def __init__(self) -> None:
        self._buffer = ""
        self._inside = False
        self._open: _OpenCall | None = None  # a call whose head was read (it streams)
        self._after_call = False
        self.tool_calls: list[ParsedToolCall] = []

    def feed(self, text: str) -> ToolCallEvents:
        self._buffer += text
        events = ToolCallEvents()
        while True:
            if self._inside:
                if not self._read_call(events):
                    return events
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
        """Flush at the end of generation: a call missing only its closing tag still counts."""
        events = ToolCallEvents()
        if self._open is not None:
            self._stream_arguments(events)
            if self._open.complete:
                self._complete(self._open.call, events)
            else:  # cut off (max_tokens): not a call; its text is content
                self._emit_content(OPEN_TAG + self._open.head + self._open.call.arguments,
                                   events)
        elif self._inside:
            self._close_whole(self._buffer, events, closed=False)
        else:
            self._emit_content(self._buffer, events)
        self._buffer = ""
        self._inside = False
        self._open = None
        return events

    def _read_call(self, events: ToolCallEvents) -> bool:
        """Advance inside a call; False when more text is needed."""
        if self._open is None:
            head = _HEAD.match(self._buffer)
            value_starts = head is not None and self._buffer[head.end():head.end() + 1] in "{["
            if head is not None and value_starts:
                call = ParsedToolCall(len(self.tool_calls), json.loads(head.group(1)), "")
                self._open = _OpenCall(call, self._buffer[:head.end()])
                self._buffer = self._buffer[head.end():]
                events.deltas.append({"index": call.index, "id": call.id, "type": "function",
                                      "function": {"name": call.name, "arguments": ""}})
            else:
                end = self._buffer.find(CLOSE_TAG)
                if end < 0:
                    return False
                self._close_whole(self._buffer[:end], events)
                self._buffer = self._buffer[end + len(CLOSE_TAG):]
                self._inside = False
                return True
        if not self._open.complete:
            self._stream_arguments(events)
            if not self._open.complete:
                return False
        end = self._buffer.find(CLOSE_TAG)
        if end < 0:
            return False
        self._complete(self._open.call, events)
        self._buffer = self._buffer[end + len(CLOSE_TAG):]
        self._inside = False
        self._open = None
        return True

    def _stream_arguments(self, events: ToolCallEvents) -> None:
        assert self._open is not None
        used = 0
        for char in self._buffer:
            used += 1
            if self._open.scanner.feed(char):
                self._open.complete = True
                break
        if used:
            piece = self._buffer[:used]
            self._open.call.arguments += piece
            events.deltas.append({"index": self._open.call.index,
                                  "function": {"arguments": piece}})
            self._buffer = self._buffer[used:]

    def _complete(self, call: ParsedToolCall, events: ToolCallEvents) -> None:
        self.tool_calls.append(call)
        events.tool_calls.append(call)
        self._after_call = True

    def _close_whole(self, body: str, events: ToolCallEvents, closed: bool = True) -> None:
        decoded = _decode_call(body.strip())
        if decoded is None:
            self._emit_content(OPEN_TAG + body + (CLOSE_TAG if closed else ""), events)
            return
        call = ParsedToolCall(index=len(self.tool_calls), name=decoded[0], arguments=decoded[1])
        events.deltas.append({"index": call.index, **call.to_openai()})
        self._complete(call, events)

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
