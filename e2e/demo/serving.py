"""Section 3: the tiny model served through a real router -> prefill -> decode (the agentic
sample's pods on the real node, or local processes with --skip-cluster), and a summarization,
a story and a 5-turn agentic session sent with the `openai` client, and one more summary with
the prefill tier's KV compression (snapkv, half the KV). Per request: TTFT and inter-token
latency as the client saw them, and from the workers' /metrics the KV bytes handed from prefill
to decode and the prefix-cache hits on each side."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import openai

from e2e.demo import report
from e2e.demo.scrape import delta, scrape_all
from e2e.demo.workloads import (
    AGENT_TASK,
    DEMO_KV_COMPRESSION,
    MODEL,
    SYSTEM_AGENT,
    Timed,
    agent_observation,
    story_messages,
    summary_messages,
    timed_chat,
)
from e2e.local_processes import router, running, wait_for_tiers, worker
from pdserve.runtime.checkpoints.builtin import resolve_model_path

# Prompts shorter than this skip the prefill tier (conditional disaggregation): the story
# prompts are, so their decode worker prefills them itself and no KV travels.
SHORT_PROMPT_THRESHOLD = 32
SUMMARY_TOKENS = 16
STORY_TOKENS = 128
AGENT_TOKENS = 24
AGENT_TURNS = 5


class Endpoint(Protocol):
    """A router or worker the demo talks to: a pod, or a local process."""

    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str: ...


@dataclass
class Stack:
    prefill: Sequence[Endpoint]
    decode: Sequence[Endpoint]
    router: Endpoint
    model: str = MODEL  # the served model name requests ask for

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.router.url + "/v1", api_key="demo",
                                  max_retries=0, timeout=120)


@contextlib.contextmanager
def serving_stack(logs: Path, prefill: int, decode: int) -> Iterator[Stack]:
    """`prefill` + `decode` workers and a router in front, stopped on exit."""
    model = str(resolve_model_path("builtin:tiny"))  # generated once, before workers race for it
    compression = [part for key, value in DEMO_KV_COMPRESSION.worker_settings().items()
                   if value is not None for part in ("--" + key.replace("_", "-"), str(value))]
    prefills = [worker("prefill", model, logs, *compression) for _ in range(prefill)]
    decodes = [worker("decode", model, logs) for _ in range(decode)]
    with running(*prefills, *decodes):
        gateway = router(prefills, decodes, logs, "--routing-policy", "prefix-affinity",
                         "--short-prompt-threshold", str(SHORT_PROMPT_THRESHOLD))
        with running(gateway):
            wait_for_tiers(gateway)
            yield Stack(prefills, decodes, gateway)


@dataclass(frozen=True)
class Measured:
    """One request: what the client saw, and what the workers counted while it ran."""

    label: str
    timed: Timed
    kv_bytes: float
    prefill_hit_tokens: float
    decode_hit_tokens: float

    def row(self) -> list[object]:
        return [self.label, self.timed.prompt_tokens, self.timed.completion_tokens,
                _ms(self.timed.ttft_s), _ms(self.timed.itl_s), f"{self.kv_bytes / 1024:.1f}",
                int(self.prefill_hit_tokens), int(self.decode_hit_tokens)]


HEADER = ["request", "prompt tok", "output tok", "TTFT ms", "ITL ms", "KV KiB handed over",
          "prefill cache hits", "decode cache hits"]


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


async def measured(stack: Stack, label: str, send: Callable[[], Awaitable[Timed]]) -> Measured:
    """Sends one request alone, so the counters' increase belongs to it."""
    before_p, before_d = scrape_all(stack.prefill), scrape_all(stack.decode)
    timed = await send()
    after_p, after_d = scrape_all(stack.prefill), scrape_all(stack.decode)
    hits = "pdserve_prefix_cache_hits_total"
    return Measured(label, timed, delta(before_d, after_d, "pdserve_kv_transfer_bytes_total"),
                    delta(before_p, after_p, hits), delta(before_d, after_d, hits))


async def run_workloads(stack: Stack) -> list[Measured]:
    results: list[Measured] = []
    async with stack.client() as client:
        for seed in range(2):
            messages = summary_messages(seed)
            results.append(await measured(stack, f"summary {seed + 1}", lambda m=messages:
                                          timed_chat(client, m, SUMMARY_TOKENS, stack.model)))
        compressed = summary_messages(2)  # another document: no prefix-cache hit either way
        results.append(await measured(stack, "summary 3, snapkv 50%", lambda: timed_chat(
            client, compressed, SUMMARY_TOKENS, stack.model, kv_compression="auto")))
        for seed in range(2):
            messages = story_messages(seed)
            results.append(await measured(stack, f"story {seed + 1}", lambda m=messages:
                                          timed_chat(client, m, STORY_TOKENS, stack.model)))
        history = [{"role": "system", "content": SYSTEM_AGENT},
                   {"role": "user", "content": AGENT_TASK}]
        for turn in range(1, AGENT_TURNS + 1):
            result = await measured(stack, f"agent turn {turn}", lambda h=list(history):
                                    timed_chat(client, h, AGENT_TOKENS, stack.model))
            results.append(result)
            history += [{"role": "assistant", "content": result.timed.text},
                        {"role": "user", "content": agent_observation(turn)}]
    return results


def show(results: list[Measured]) -> None:
    report.table(HEADER, [r.row() for r in results])
    total = sum(r.kv_bytes for r in results)
    # Summary 2 is the uncompressed one to compare with: summary 1 also pays the first
    # request's warm-up; both hand over (almost) their whole prompt.
    plain, compressed = results[1], results[2]
    report.say(f"\n  KV compression: summary 3 asked for the prefill tier's snapkv (ratio "
               f"{DEMO_KV_COMPRESSION.ratio}): {compressed.kv_bytes / 1024:.1f} KiB handed over "
               f"for {compressed.timed.prompt_tokens} prompt tokens, against "
               f"{plain.kv_bytes / 1024:.1f} KiB for summary 2's {plain.timed.prompt_tokens}; "
               f"TTFT {_ms(compressed.timed.ttft_s)} vs {_ms(plain.timed.ttft_s)} ms, ITL "
               f"{_ms(compressed.timed.itl_s)} vs {_ms(plain.timed.itl_s)} ms. The other requests "
               f"opt out (body field kv_compression: none).")
    report.say(f"\n  KV handed over in all: {report.human_bytes(total)} "
               f"(pdserve_kv_transfer_bytes_total on the decode workers). Story prompts are "
               f"shorter than --short-prompt-threshold {SHORT_PROMPT_THRESHOLD}: they skip the "
               f"prefill tier and move no KV. Agent turns resend a growing history: its blocks "
               f"come from the prefix caches instead of being recomputed or sent again.")
