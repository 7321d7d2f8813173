"""What a chat request constrains its output to (tools under tool_choice, response_format), and
compiling that grammar before the request reaches the engine.

Compiling runs on a thread with a time limit, so a large schema never stalls the engine's step
or the event loop; the engine then finds the grammar in the compiler's cache.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pdserve.runtime.grammar.compiler import DEFAULT_COMPILE_TIMEOUT, GrammarError
from pdserve.runtime.grammar.spec import (
    DEFAULT_MAX_WHITESPACE,
    Tool,
    json_grammar,
    tool_call_grammar,
)
from pdserve.runtime.serving.openai_protocol import ChatCompletionRequest, RequestError
from pdserve.runtime.serving.server import WorkerState


@dataclass(frozen=True)
class Constraint:
    grammar: str  # a runtime/grammar/spec.py string
    # (request field, the grammar of its schema alone): what a failure is blamed on
    parts: tuple[tuple[str, str], ...]


def chat_constraint(state: WorkerState, body: ChatCompletionRequest) -> Constraint | None:
    max_whitespace = state.settings.get("grammar_max_whitespace", DEFAULT_MAX_WHITESPACE)
    schema = body.response_format.output_schema() if body.response_format else None
    choice = body.chosen_tool()
    tools = [Tool(tool.function.name, tool.function.parameters) for tool in body.tools or []]
    pieces = [(f"tools[{i}].function.parameters", tool.parameters)
              for i, tool in enumerate(tools) if choice is not None and tool.parameters is not None]
    if schema is not None and choice in (None, "auto"):
        pieces.append(("response_format", schema))
    parts = tuple((param, _part(param, piece, max_whitespace)) for param, piece in pieces)
    if choice is not None:
        return Constraint(tool_call_grammar(tools, choice, body.parallel_tool_calls, schema,
                                            max_whitespace), parts)
    if schema is not None:
        return Constraint(json_grammar(schema, max_whitespace), parts)
    return None


def _part(param: str, schema: dict[str, object], max_whitespace: int) -> str:
    try:
        return json_grammar(schema, max_whitespace)
    except GrammarError as exc:
        raise _refusal(param, exc) from None


def _refusal(param: str, exc: Exception) -> RequestError:
    return RequestError(f"{param}: cannot constrain the output to this schema: {exc}",
                        param=param)


def _blame(state: WorkerState, constraint: Constraint) -> str:
    """The request field whose schema alone does not compile (the first part, else)."""
    for param, grammar in constraint.parts:
        try:
            state.grammars.compile(grammar)
        except GrammarError:
            return param
    return constraint.parts[0][0] if constraint.parts else "tools"


async def compile_constraint(state: WorkerState, constraint: Constraint) -> None:
    timeout = state.settings.get("grammar_compile_timeout", DEFAULT_COMPILE_TIMEOUT)
    try:
        await asyncio.wait_for(asyncio.to_thread(state.grammars.compile, constraint.grammar),
                               timeout)
    except GrammarError as exc:
        raise _refusal(await asyncio.to_thread(_blame, state, constraint), exc) from None
    except TimeoutError:
        raise RequestError("compiling the grammar of this request's schemas took longer than "
                           f"{timeout:g} s (the worker's --grammar-compile-timeout)",
                           param=constraint.parts[0][0] if constraint.parts else None) from None
