"""The three kinds of work the demo sends, and one streamed request timed the way a user sees
it (official `openai` client): time to first token, then the mean gap between tokens."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import openai

from pdserve.api.compression import KVCompressionSpec

MODEL = "tiny"
# The prefill tier's KV compression in the demo; requests opt out unless they ask for it.
DEMO_KV_COMPRESSION = KVCompressionSpec(method="snapkv", ratio=0.5)
TEXT = (
    "the quarterly report shows revenue growth across all regions while operating costs fell "
    "after the migration of services to the new cluster and the board approved a plan to hire "
    "engineers expand the research team open an office in the north and review pricing for "
    "customers who renewed contracts early despite supply delays and rising energy prices"
)
WORDS = TEXT.split()
SYSTEM_SUMMARY = "You summarize documents in one short sentence."
SYSTEM_AGENT = (
    "You are a coding agent. Tools: search(query) finds files; read(path) returns a file; "
    "run(command) runs a shell command; edit(path, patch) changes a file. Think step by step, "
    "call one tool per turn, and stop when the tests pass."
)
STORY_PROMPTS = (
    "Tell me a long story about a dragon who learns to sail.",
    "Write a bedtime story about a lighthouse keeper and a lost whale.",
    "Tell a story about a robot who opens a bakery in a small town.",
)
AGENT_TASK = "The test test_parse_dates fails after the last commit. Find the cause and fix it."


def document(seed: int, words: int) -> str:
    """A long, distinct document per seed (no shared prefix between two summaries)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def summary_messages(seed: int, words: int = 700) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_SUMMARY},
            {"role": "user", "content": f"Summarize:\n{document(seed, words)}"}]


def story_messages(seed: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": STORY_PROMPTS[seed % len(STORY_PROMPTS)]}]


def agent_observation(turn: int) -> str:
    """What a tool returned at `turn`: a chunk of a file or a command's output."""
    return f"Observation {turn}: " + document(100 + turn, 90)


@dataclass(frozen=True)
class Timed:
    """One request as the client saw it. itl_s is NaN for a single-token answer."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    itl_s: float
    e2e_s: float


def chat_body(messages: list[dict[str, str]], max_tokens: int, model: str = MODEL,
              kv_compression: str = "none") -> dict[str, Any]:
    # ignore_eos (a vLLM-style extension) keeps answer lengths fixed: the tiny model's random
    # weights would otherwise stop at an arbitrary point. kv_compression "none" opts out of the
    # workers' KV compression, "auto" takes it (the demo compresses one summary, side by side).
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
            "extra_body": {"ignore_eos": True, "kv_compression": kv_compression}}


def _timing(start: float, token_times: list[float], end: float, completion_tokens: int,
            ) -> tuple[float, float]:
    if not token_times:
        return end - start, float("nan")
    gaps = max(completion_tokens, len(token_times)) - 1
    itl = (token_times[-1] - token_times[0]) / gaps if gaps > 0 else float("nan")
    return token_times[0] - start, itl


async def timed_chat(client: openai.AsyncOpenAI, messages: list[dict[str, str]],
                     max_tokens: int, model: str = MODEL, kv_compression: str = "none"
                     ) -> Timed:
    start = time.perf_counter()
    token_times: list[float] = []
    parts: list[str] = []
    usage = None
    async for chunk in await client.chat.completions.create(
            **chat_body(messages, max_tokens, model, kv_compression)):
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            token_times.append(time.perf_counter())
            parts.append(chunk.choices[0].delta.content)
    end = time.perf_counter()
    if usage is None:
        raise RuntimeError("the stream ended without a usage chunk")
    ttft, itl = _timing(start, token_times, end, usage.completion_tokens)
    return Timed("".join(parts), usage.prompt_tokens, usage.completion_tokens, ttft, itl,
                 end - start)
