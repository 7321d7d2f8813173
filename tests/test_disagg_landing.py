"""A decode worker never frees blocks that KV may still be landing in: a transfer it gives up on
(unclaimed within --kv-timeout) is cut off first, and its blocks come free when the receiving
thread reports that it stopped (a real DecodeTransfers over a real engine)."""

from __future__ import annotations

import asyncio

import pytest
from runtime_engine_helpers import one_torch_thread  # noqa: F401 - fixture

from pdserve.runtime.checkpoints.builtin import init_model
from pdserve.runtime.disagg.decode_transfers import DecodeTransfers
from pdserve.runtime.disagg.kv_transfer import Offer
from pdserve.runtime.engine.async_engine import AsyncEngine
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.serving.metrics import WorkerMetrics

BLOCK_SIZE = 4
NUM_BLOCKS = 6
KV_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(init_model(tmp_path_factory.mktemp("model") / "tiny"))


@pytest.fixture
async def decode(model: str):
    engine = AsyncEngine(LLMEngine(EngineConfig(model=model, device="cpu", block_size=BLOCK_SIZE,
                                                num_kv_blocks=NUM_BLOCKS)))
    engine.start()
    transfers = DecodeTransfers(engine, WorkerMetrics("decode", "tiny", lambda: None),
                                KV_TIMEOUT, asyncio.get_running_loop())
    yield transfers
    await engine.stop()


async def free_blocks(transfers: DecodeTransfers) -> int:
    return await transfers.engine.call(lambda e: e.block_manager.num_free_blocks)


async def reserved(transfers: DecodeTransfers, transfer_id: str) -> None:
    """What the KV receiver's thread does on an OFFER of 2 blocks."""
    prompt = [10 + i for i in range(2 * BLOCK_SIZE)]
    await asyncio.to_thread(transfers.reserve, Offer(transfer_id, prompt, 2, {"max_tokens": 4}))
    assert await free_blocks(transfers) == NUM_BLOCKS - 2


@pytest.mark.usefixtures("one_torch_thread")
async def test_blocks_still_landing_are_freed_only_once_the_receiver_stopped(decode) -> None:
    cut: list[str] = []
    decode.cancel_receiving = lambda transfer_id: cut.append(transfer_id) or True
    await reserved(decode, "slow")
    await asyncio.sleep(KV_TIMEOUT + 0.3)  # unclaimed: the decode side gives up on it
    assert cut == ["slow"]
    assert await free_blocks(decode) == NUM_BLOCKS - 2  # a write may still be in flight
    assert await decode.claim("slow", [10 + i for i in range(8)], None) is None
    decode.fail("slow", "cut off by the decode side")  # the receiving thread has stopped
    await asyncio.sleep(0.1)
    assert await free_blocks(decode) == NUM_BLOCKS
    assert "slow" not in decode.transfers


@pytest.mark.usefixtures("one_torch_thread")
async def test_a_transfer_completed_after_it_was_given_up_on_is_freed_too(decode) -> None:
    decode.cancel_receiving = lambda transfer_id: True
    await reserved(decode, "late")
    await asyncio.sleep(KV_TIMEOUT + 0.3)
    decode.complete("late", 1024, 0.1)  # DONE arrived as the cut did
    await asyncio.sleep(0.1)
    assert await free_blocks(decode) == NUM_BLOCKS
    assert "late" not in decode.transfers


@pytest.mark.usefixtures("one_torch_thread")
async def test_with_no_thread_receiving_the_blocks_are_freed_at_once(decode) -> None:
    await reserved(decode, "idle")  # cancel_receiving: False, as when nothing is landing
    await asyncio.sleep(KV_TIMEOUT + 0.3)
    assert await free_blocks(decode) == NUM_BLOCKS
