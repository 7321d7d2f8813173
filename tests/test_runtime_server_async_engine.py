"""AsyncEngine with a stand-in engine (pure logic: threading, fan-out, aborts, failures)."""

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from pdserve.runtime.engine.async_engine import STALLED_WAIT_SECONDS, AsyncEngine


@dataclass
class Output:
    request_id: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None = None


@dataclass
class Stats:
    num_running: int


@dataclass
class CountingEngine:
    """Emits one token per step per request until max_tokens; `fail_at_step` raises there."""

    running: dict[str, list[int]] = field(default_factory=dict)
    aborted: list[str] = field(default_factory=list)
    steps: int = 0
    fail_at_step: int | None = None

    def add_request(self, request_id, prompt_token_ids, params, priority=0):
        if not prompt_token_ids:
            raise ValueError("empty prompt")
        self.running[request_id] = [0, params]

    def abort(self, request_id):
        self.aborted.append(request_id)
        return self.running.pop(request_id, None) is not None

    def has_unfinished(self):
        return bool(self.running)

    def step(self):
        self.steps += 1
        if self.steps == self.fail_at_step:
            raise RuntimeError("boom")
        outputs = []
        for request_id, state in list(self.running.items()):
            state[0] += 1
            done = state[0] >= state[1]
            outputs.append(Output(request_id, [state[0]], done, "length" if done else None))
            if done:
                del self.running[request_id]
        return outputs

    def stats(self):
        return Stats(len(self.running))

    def close(self):
        pass


async def collect(engine, request_id, max_tokens):
    return [out.token_ids[0] async for out in engine.generate(request_id, [1], max_tokens)]


@pytest.mark.timeout(20)
async def test_concurrent_requests_get_their_own_outputs():
    engine = AsyncEngine(CountingEngine())
    engine.start()
    results = await asyncio.gather(*(collect(engine, f"r{i}", i + 1) for i in range(8)))
    assert results == [list(range(1, i + 2)) for i in range(8)]
    assert engine.num_active == 0 and engine.stats.num_running == 0
    await engine.stop()


@pytest.mark.timeout(20)
async def test_bad_request_raises_before_any_output():
    engine = AsyncEngine(CountingEngine())
    engine.start()
    with pytest.raises(ValueError, match="empty prompt"):
        await engine.submit("r", [], 3)
    assert engine.num_active == 0
    await engine.stop()


@pytest.mark.timeout(20)
async def test_leaving_early_or_cancelling_aborts_the_request():
    inner = CountingEngine()
    engine = AsyncEngine(inner)
    engine.start()
    stream = await engine.submit("closed", [1], 10_000)
    await stream.__anext__()
    stream.close()

    async def consume():
        async for _ in engine.generate("cancelled", [1], 10_000):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await engine.call(lambda e: None)  # the aborts ran before this command
    assert set(inner.aborted) == {"closed", "cancelled"}
    assert not inner.running and engine.num_active == 0
    await engine.stop()


@pytest.mark.timeout(20)
async def test_a_failing_step_fails_its_requests_and_the_engine_lives_on():
    inner = CountingEngine(fail_at_step=2)
    engine = AsyncEngine(inner)
    engine.start()
    with pytest.raises(RuntimeError, match="engine step failed"):
        await collect(engine, "doomed", 5)
    assert await collect(engine, "next", 2) == [1, 2]
    await engine.stop()


@pytest.mark.timeout(20)
async def test_cancelled_while_admission_is_queued_is_undone():
    inner = CountingEngine()
    engine = AsyncEngine(inner)
    engine.start()
    busy = asyncio.create_task(engine.call(lambda e: time.sleep(0.2)))  # hold the engine thread
    await asyncio.sleep(0.01)
    admitting = asyncio.create_task(engine.submit("late", [1], 10_000))
    await asyncio.sleep(0.01)
    admitting.cancel()
    await busy
    await engine.call(lambda e: None)
    assert inner.aborted == ["late"] and not inner.running and engine.num_active == 0
    await engine.stop()


@dataclass
class BlockedEngine(CountingEngine):
    """Holds a request it can never run (as when KV transfers hold every free block)."""

    def has_unfinished(self):
        return True

    def step(self):
        self.steps += 1
        return []

    def stats(self):
        return Stats(0)


@pytest.mark.timeout(20)
async def test_an_engine_that_can_run_nothing_does_not_spin():
    inner = BlockedEngine()
    engine = AsyncEngine(inner)
    engine.start()
    await asyncio.sleep(0.5)
    steps = inner.steps
    await engine.stop()
    # A step every few milliseconds at most (a spinning thread makes tens of thousands and
    # starves the threads that would free the blocks).
    assert 0 < steps < 0.5 / STALLED_WAIT_SECONDS * 1.5
