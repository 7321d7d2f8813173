"""Open-loop load for the planner's end-to-end tests: requests fired at a fixed rate through
the official `openai` client, whatever the serving does (a closed loop would hide missing
capacity). The kind of work can be switched while it runs: summaries (long prompts, short
answers), stories (short prompts, long answers), or nothing."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import openai

from e2e.demo.workloads import story_messages, summary_messages, timed_chat

# Requests in flight beyond this are not sent (counted as dropped): the machine has 2 cores.
MAX_IN_FLIGHT = 48


@dataclass
class Load:
    base_url: str
    kind: str = "idle"  # idle | summaries | stories
    rate: float = 2.0  # requests per second
    summary_words: int = 600
    story_tokens: int = 160
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def switch(self, kind: str, rate: float | None = None) -> None:
        self.kind = kind
        if rate is not None:
            self.rate = rate

    async def _one(self, client: openai.AsyncOpenAI, kind: str, seed: int) -> None:
        try:
            if kind == "summaries":
                await timed_chat(client, summary_messages(seed, self.summary_words), 4)
            else:
                await timed_chat(client, story_messages(seed), self.story_tokens)
        except Exception:  # a failed request is load too; the planner sees its effects
            self.failed += 1

    async def _run(self) -> None:
        client = openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key="none",
                                    max_retries=0, timeout=300)
        tasks: set[asyncio.Task[None]] = set()
        seed = 0
        while not self._stop.is_set():
            await asyncio.sleep(1.0 / max(self.rate, 0.01))
            if self.kind == "idle":
                continue
            if len(tasks) >= MAX_IN_FLIGHT:
                self.dropped += 1
                continue
            seed += 1
            task = asyncio.create_task(self._one(client, self.kind, seed))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            self.sent += 1
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(30)
