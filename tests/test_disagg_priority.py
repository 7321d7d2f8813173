"""Priority classes through the prefill/decode split: OFFERs waiting at a decode worker for KV
blocks get them most urgent first (offer_queue.py; a real DecodeTransfers over a real engine,
also behind a real KV receiver fed by a real KVSender), and a prefill worker's prefill-only
prompts are admitted most urgent first."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from runtime_engine_helpers import one_torch_thread  # noqa: F401 - fixture

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.checkpoints.identity import ModelIdentity
from pdserve.runtime.disagg.decode_transfers import DecodeTransfers
from pdserve.runtime.disagg.kv_transfer import DecodeFullError, KVReceiverServer, KVSender, Offer
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


async def reserve(transfers: DecodeTransfers, item: Offer) -> asyncio.Task:
    """The KV receiver's call for an OFFER (from its thread)."""
    task = asyncio.ensure_future(asyncio.to_thread(transfers.reserve, item))
    await asyncio.sleep(0.05)  # queued before the next one arrives
    return task


def holders(transfers: DecodeTransfers) -> list[str]:
    """The transfers holding blocks, in the order they got them."""
    return list(transfers.transfers)


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
    await reserve(decode, offer("filler", 6, 0, False))  # every block
    low_1 = await reserve(decode, offer("low-1", 3, 5, True))
    low_2 = await reserve(decode, offer("low-2", 3, 5, True))
    urgent = await reserve(decode, offer("urgent", 3, 0, True))
    assert holders(decode) == ["filler"]
    decode.fail("filler", "test: its blocks come free")
    await asyncio.wait_for(asyncio.gather(urgent, low_1), 5)
    assert holders(decode) == ["urgent", "low-1"]  # then no block is left
    assert not low_2.done()
    decode.fail("urgent", "test")
    await asyncio.wait_for(low_2, 5)
    assert holders(decode) == ["low-1", "low-2"]


@pytest.mark.usefixtures("one_torch_thread")
async def test_only_a_more_urgent_offer_that_does_not_wait_goes_before_waiting_ones(
        decode: DecodeTransfers) -> None:
    await reserve(decode, offer("filler", 4, 0, False))  # 2 blocks left
    waiting = await reserve(decode, offer("waiting", 3, 5, True))
    with pytest.raises(DecodeFullError, match="now"):  # it fits, but "waiting" is as urgent
        await asyncio.to_thread(decode.reserve, offer("peer", 1, 5, False))
    await asyncio.to_thread(decode.reserve, offer("urgent", 1, 0, False))
    assert holders(decode) == ["filler", "urgent"]
    decode.fail("filler", "test")
    await asyncio.wait_for(waiting, 5)
    assert holders(decode) == ["urgent", "waiting"]


@pytest.mark.usefixtures("one_torch_thread")
async def test_pushes_waiting_for_room_reach_the_decode_worker_most_urgent_first(
        model: str, decode: DecodeTransfers) -> None:
    """Each push runs on a thread of its own: with the loop's default executor down to one busy
    thread, the waiting pushes still reach the decode worker's queue, which serves them by class."""
    identity = ModelIdentity("weights", "tokenizer", "float32", BLOCK_SIZE)
    pool = decode.engine.engine.kv_pool
    receiver = KVReceiverServer(pool, decode, "127.0.0.1", 0, identity=identity, timeout=5)
    receiver.start()
    prefill = engine(model, num_kv_blocks=8)
    sender = KVSender(prefill.kv_pool, identity=identity, timeout=5)
    loop = asyncio.get_running_loop()
    busy, release = ThreadPoolExecutor(1), threading.Event()
    loop.set_default_executor(busy)
    loop.run_in_executor(None, release.wait)
    target = f"127.0.0.1:{receiver.port}"

    async def push(item: Offer) -> asyncio.Future:
        num_blocks = len(item.prompt_token_ids) // BLOCK_SIZE
        sending = sender.start_push(target, item, list(range(num_blocks)))
        await asyncio.sleep(0.05)  # queued before the next one arrives
        return sending

    try:
        await asyncio.wait_for(await push(offer("filler", 6, 0, False)), 5)
        low_1 = await push(offer("low-1", 3, 5, True))
        low_2 = await push(offer("low-2", 3, 5, True))
        urgent = await push(offer("urgent", 3, 0, True))
        assert holders(decode) == ["filler"]
        decode.fail("filler", "test: its blocks come free")
        await asyncio.wait_for(asyncio.gather(urgent, low_1), 5)
        assert holders(decode) == ["urgent", "low-1"] and not low_2.done()
        decode.fail("urgent", "test")
        await asyncio.wait_for(low_2, 5)
        assert holders(decode) == ["low-1", "low-2"]
    finally:
        release.set()  # the executor stays the loop's, free again, until the loop closes
        sender.close()
        receiver.close()
        prefill.close()


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
