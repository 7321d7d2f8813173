"""Periodic work per LLMService (the repair pass, the planner, the recommendation) without kopf
timers: kopf puts a finalizer on every object a timer or daemon matches, so that deleting an
LLMService, or its namespace, would hang whenever the operator is down.

A kopf index (filled from kopf's own watch, no finalizer) holds every LLMService's latest body;
one loop started at operator startup runs each registered job for each matching object every
`interval` seconds, in a thread of the job's own pool, one run per (job, object) at a time: a
job that waits (on Prometheus, on pods that do not answer) never delays another's runs. Each
object has its own memo (a shallow copy of the operator's), as kopf gives its handlers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from pdserve.api.resource import GROUP, PLURAL, VERSION

TICK_SECONDS = 1.0
# As many threads per job as asyncio's default executor has in all.
THREADS_PER_JOB = min(32, (os.cpu_count() or 1) + 4)
_log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Job:
    id: str
    interval: float
    when: Callable[[Mapping[str, Any]], bool]  # given the spec
    run: Callable[..., None]  # kwargs: body, spec, name, namespace, uid, memo
    spread: bool  # first run at a per-object offset within one interval (vs after one)


JOBS: list[Job] = []


def job(id: str, interval: float, when: Callable[[Mapping[str, Any]], bool] = lambda spec: True,
        spread: bool = False) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a function to run every `interval` seconds for each LLMService `when` allows."""
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        JOBS.append(Job(id, interval, when, fn, spread))
        return fn
    return register


@kopf.index(GROUP, VERSION, PLURAL, id="llmservices")
def llmservices(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): copy.deepcopy(dict(body))} if namespace else {}


@kopf.on.startup(id="periodic")
async def start(memo: Any, **kwargs: Any) -> None:
    index: kopf.Index[Key, dict[str, Any]] = kwargs["llmservices"]  # passed by the index's id
    memo.periodic = asyncio.get_running_loop().create_task(run_forever(index, memo, JOBS))


@kopf.on.cleanup(id="periodic")
async def stop(memo: Any, **_: Any) -> None:
    task = getattr(memo, "periodic", None)
    if task is not None:
        task.cancel()


def start_offset(uid: str, interval: float) -> float:
    """A stable per-object start within one interval: hundreds of LLMServices resumed at once
    are then spread over the interval instead of run in one burst."""
    return interval * int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


async def run_forever(index: Mapping[Key, Any], memo: Any, jobs: list[Job],
                      tick: float = TICK_SECONDS) -> None:
    pools = {item.id: concurrent.futures.ThreadPoolExecutor(THREADS_PER_JOB, item.id)
             for item in jobs}
    try:
        await _loop(index, memo, jobs, tick, pools)
    finally:
        for pool in pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


async def _loop(index: Mapping[Key, Any], memo: Any, jobs: list[Job], tick: float,
                pools: Mapping[str, concurrent.futures.Executor]) -> None:
    loop = asyncio.get_running_loop()
    due: dict[tuple[str, Key], float] = {}
    busy: set[tuple[str, Key]] = set()
    memos: dict[Key, Any] = {}
    while True:
        now = loop.time()
        present = set(index)
        for key in present:
            body = next(iter(index[key]), None)
            if body is None:
                continue
            spec, meta = body.get("spec") or {}, body.get("metadata") or {}
            object_memo = memos.setdefault(key, copy.copy(memo))
            for item in jobs:
                slot = (item.id, key)
                if not item.when(spec):
                    due.pop(slot, None)
                    continue
                if slot not in due:
                    due[slot] = now + (start_offset(meta.get("uid", ""), item.interval)
                                       if item.spread else item.interval)
                elif now >= due[slot] and slot not in busy:
                    due[slot] = now + item.interval
                    busy.add(slot)
                    run = asyncio.ensure_future(loop.run_in_executor(
                        pools[item.id], functools.partial(
                            item.run, body=body, spec=spec, name=key[1], namespace=key[0],
                            uid=meta.get("uid"), memo=object_memo)))
                    run.add_done_callback(functools.partial(_finished, slot=slot, busy=busy))
        for slot in [slot for slot in due if slot[1] not in present]:
            del due[slot]
        for key in set(memos) - present:
            del memos[key]
        await asyncio.sleep(tick)


def _finished(done: asyncio.Future[None], *, slot: tuple[str, Key],
              busy: set[tuple[str, Key]]) -> None:
    busy.discard(slot)
    if not done.cancelled() and done.exception() is not None:
        _log.error("%s of %s/%s failed (retried next interval): %s", slot[0], *slot[1],
                   done.exception())
