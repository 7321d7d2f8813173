"""Pure routing logic of the router: prefix hashing, affinity blended with load, decode choice."""

import asyncio
import json

import pytest

from pdserve.router.discovery import RESOLVE_OVERRIDE_ENV, parse_endpoints, resolve_service
from pdserve.router.proxy import prompt_text
from pdserve.router.routing import (
    CHARS_PER_BLOCK,
    PrefixIndex,
    RoutingPolicy,
    WorkerLoad,
    estimate_tokens,
    text_block_hashes,
)

SYSTEM = "You are a helpful assistant that answers questions about the weather. " * 4


def test_hashes_are_chained_stable_and_cover_full_blocks_only():
    text = "x" * (CHARS_PER_BLOCK * 3 + 10)
    hashes = text_block_hashes(text)
    assert len(hashes) == 3
    assert hashes == text_block_hashes(text)
    # Same chunk content at another position hashes differently (chained to its prefix).
    assert len(set(hashes)) == 3
    longer = text_block_hashes(text + "y" * CHARS_PER_BLOCK * 2)
    assert longer[:3] == hashes
    a, b = ("a" * CHARS_PER_BLOCK, "b" * CHARS_PER_BLOCK)
    assert text_block_hashes(a) != text_block_hashes(b)


def test_prefix_index_counts_leading_matches_per_worker():
    index = PrefixIndex()
    a = text_block_hashes(SYSTEM + "first question")
    index.record(a, "w1")
    b = text_block_hashes(SYSTEM + "completely different question text here, long enough")
    matched = index.matched_blocks(b, ["w1", "w2"])
    assert matched["w2"] == 0
    assert 0 < matched["w1"] < len(b)


def test_prefix_index_is_bounded():
    index = PrefixIndex(capacity=10)
    for i in range(5):
        index.record(text_block_hashes(f"{i}" * CHARS_PER_BLOCK * 4), "w")
    assert len(index) == 10


def test_prefill_affinity_sticks_to_the_worker_holding_the_prefix():
    policy = RoutingPolicy("prefix-affinity", "prefill")
    loads = {"p1": WorkerLoad(), "p2": WorkerLoad()}
    turn1 = text_block_hashes(SYSTEM + "What is the weather in Paris?")
    first = policy.choose(loads, turn1)
    policy.record(turn1, first)
    other = "p2" if first == "p1" else "p1"
    loads[first].waiting = 1  # slightly busier, still preferred for its prefix
    turn2 = text_block_hashes(SYSTEM + "What is the weather in Paris? Sunny. And tomorrow?")
    assert policy.choose(loads, turn2) == first
    loads[first].waiting = 8  # overloaded: load wins over affinity
    assert policy.choose(loads, turn2) == other


def test_prefill_without_affinity_goes_to_shortest_queue():
    policy = RoutingPolicy("prefix-affinity", "prefill")
    loads = {"p1": WorkerLoad(waiting=3), "p2": WorkerLoad(inflight=1)}
    assert policy.choose(loads, text_block_hashes("new prompt " * 30)) == "p2"


def test_exclude_and_empty():
    policy = RoutingPolicy("least-loaded", "prefill")
    loads = {"p1": WorkerLoad(), "p2": WorkerLoad(waiting=5)}
    assert policy.choose(loads, [], frozenset({"p1"})) == "p2"
    assert policy.choose(loads, [], frozenset({"p1", "p2"})) is None
    assert policy.choose({}, []) is None


def test_decode_prefers_free_kv_and_few_running():
    policy = RoutingPolicy("least-loaded", "decode")
    loads = {"d1": WorkerLoad(kv_usage=0.9, running=2, max_num_seqs=16),
             "d2": WorkerLoad(kv_usage=0.2, running=2, max_num_seqs=16)}
    assert policy.choose(loads, []) == "d2"
    loads["d2"].running = 16
    assert policy.choose(loads, []) == "d1"


def test_round_robin_cycles():
    policy = RoutingPolicy("round-robin", "decode")
    loads = {"a": WorkerLoad(), "b": WorkerLoad(), "c": WorkerLoad()}
    picks = [policy.choose(loads, []) for _ in range(6)]
    assert sorted(picks[:3]) == ["a", "b", "c"] and picks[:3] == picks[3:]


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown routing policy"):
        RoutingPolicy("random", "prefill")


def test_estimate_and_prompt_text():
    assert estimate_tokens("abcd" * 10) == 10
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}
    assert prompt_text(chat, "/v1/chat/completions") == "<system>s<user>u"
    assert prompt_text({"prompt": "hi"}, "/v1/completions") == "hi"
    assert prompt_text({"prompt": 3}, "/v1/completions") == ""


def test_parse_endpoints():
    assert parse_endpoints("a:1, b:2") == ["a:1", "b:2"]
    assert parse_endpoints("") == []
    for bad in ("a", "a:x", ":80", "a:70000"):
        with pytest.raises(ValueError, match="bad endpoint"):
            parse_endpoints(bad)


def test_resolve_service_uses_override_then_dns(monkeypatch):
    name = "svc.ns.svc.cluster.local:8000"
    monkeypatch.setenv(RESOLVE_OVERRIDE_ENV, json.dumps({name: ["127.0.0.1:1", "127.0.0.1:2"]}))
    assert asyncio.run(resolve_service(name)) == ["127.0.0.1:1", "127.0.0.1:2"]
    assert asyncio.run(resolve_service("localhost:8000")) in (["127.0.0.1:8000"],
                                                             ["[::1]:8000", "127.0.0.1:8000"],
                                                             ["127.0.0.1:8000", "[::1]:8000"])
