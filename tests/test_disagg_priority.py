"""Priority classes through the prefill/decode split: OFFERs waiting at a decode worker for KV
blocks get them most urgent first (offer_queue.py; a real DecodeTransfers over a real engine),
and a prefill worker's prefill-only prompts are admitted most urgent first."""

from __future__ import annotations

import asyncio

import pytest
from runtime_engine_helpers import one_torch_thread  # noqa: F401 - fixture

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.disagg.decode_transfers import DecodeTransfers
from pdserve.runtime.disagg.kv_transfer import DecodeFullError, Offer
from pdserve.runtime.disagg.offer_queue import OfferQueue
from pdserve.runtime.engine.async_engine import AsyncEngine
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.serving.metrics import WorkerMetrics

BLOCK_SIZE = 4


def test_the_most_urgent_offer_leads_then_the_first_come() -> None:
    queue = OfferQueue()
    assert queue.head() is None and not queue.is_ahead_of(9)
    queue.join("low-1", 5)
    queue.join("low-2", 5)
    assert queue.head() == "low-1"  # equal priorities: first come, first served
    assert queue.is_ahead_of(5) and not queue.is_ahead_of(4)
    queue.join("urgent", 0)
    assert queue.head() == "urgent"
    queue.leave("urgent")
    queue.leave("low-1")
    assert queue.head() == "low-2" and len(queue) == 1


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(init_model(tmp_path_factory.mktemp("model") / "tiny"))


def engine(model: str, **settings: int) -> LLMEngine:
    return LLMEngine(EngineConfig(model=model, device="cpu", block_size=BLOCK_SIZE, **settings))


def offer(transfer_id: str, num_blocks: int, priority: int, wait: bool) -> Offer:
    first = 1 + 50 * len(transfer_id) + num_blocks  # prompts differ: no block is shared
    prompt = [first + i for i in range(num_blocks * BLOCK_SIZE)]
    return Offer(transfer_id, prompt, 2, {"max_tokens": 4}, priority, wait_for_room=wait)


async def reserve(transfers: DecodeTransfers, order: list[str], item: Offer) -> asyncio.Task:
    """The KV receiver's call for an OFFER (from its thread); records when it got blocks."""
    task = asyncio.ensure_future(asyncio.to_thread(transfers.reserve, item))
    task.add_done_callback(lambda t: order.append(item.transfer_id) if not t.exception() else None)
    await asyncio.sleep(0.05)  # queued before the next one arrives
    return task


@pytest.fixture
async def decode(model: str):
    """A decode worker's transfer table over an engine of 6 KV blocks."""
    async_engine = AsyncEngine(engine(model, num_kv_blocks=6))
    async_engine.start()
    metrics = WorkerMetrics("decode", "tiny", lambda: None)
    transfers = DecodeTransfers(async_engine, metrics, 5.0, asyncio.get_running_loop())
    yield transfers
    for transfer in transfers.transfers.values():
        transfer.expiry.cancel()
    await async_engine.stop()


@pytest.mark.usefixtures("one_torch_thread")
async def test_waiting_offers_get_blocks_most_urgent_first(decode: DecodeTransfers) -> None:
    order: list[str] = []
    await reserve(decode, order, offer("filler", 6, 0, False))  # every block
    low_1 = await reserve(decode, order, offer("low-1", 3, 5, True))
    low_2 = await reserve(decode, order, offer("low-2", 3, 5, True))
    urgent = await reserve(decode, order, offer("urgent", 3, 0, True))
    assert order == ["filler"]
    decode.fail("filler", "test: its blocks come free")
    await asyncio.wait_for(asyncio.gather(urgent, low_1), 5)
    assert order == ["filler", "urgent", "low-1"]  # then 3 blocks taken, 0 left
    assert not low_2.done()
    decode.fail("urgent", "test")
    await asyncio.wait_for(low_2, 5)
    assert order == ["filler", "urgent", "low-1", "low-2"]


@pytest.mark.usefixtures("one_torch_thread")
async def test_only_a_more_urgent_offer_that_does_not_wait_goes_before_waiting_ones(
        decode: DecodeTransfers) -> None:
    order: list[str] = []
    await reserve(decode, order, offer("filler", 4, 0, False))  # 2 blocks left
    waiting = await reserve(decode, order, offer("waiting", 3, 5, True))
    with pytest.raises(DecodeFullError, match="now"):  # it fits, but "waiting" is as urgent
        await asyncio.to_thread(decode.reserve, offer("peer", 1, 5, False))
    await reserve(decode, order, offer("urgent", 1, 0, False))
    assert order == ["filler", "urgent"]
    decode.fail("filler", "test")
    await asyncio.wait_for(waiting, 5)
    assert order == ["filler", "urgent", "waiting"]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_prefill_worker_admits_its_prompts_most_urgent_first(model: str) -> None:
    """prefill_only (the prefill role's admission) goes through the scheduler's priority order;
    the KV each finished prompt keeps pinned for its push does not change it."""
    prefill = engine(model, num_kv_blocks=64, max_num_seqs=1)
    params = SamplingParams(max_tokens=8, temperature=0.0)
    for request_id, priority in [("low", 5), ("urgent-1", 0), ("mid", 3), ("urgent-2", 0)]:
        prefill.prefill_only(request_id, [3 + priority + i for i in range(10)], params, priority)
    finished = []
    while prefill.has_unfinished():
        finished += [out.request_id for out in prefill.step() if out.finished]
    assert finished == ["urgent-1", "urgent-2", "mid", "low"]
    assert all(prefill.release(request_id) for request_id in finished)
    prefill.close()
