"""`make demo`'s serving and rebalancing sections (3 and 4) on real processes: router ->
prefill -> decode with the tiny model, the official `openai` client, a real Prometheus (when
one can run here) and the real planner."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from e2e.demo import rebalance, serving
from e2e.demo.cli import parser
from e2e.demo.scrape import Scrape, snapshot


@pytest.mark.slow
@pytest.mark.prometheus
@pytest.mark.timeout(400)
def test_serving_and_rebalancing_sections(tmp_path):
    with serving.serving_stack(tmp_path, prefill=1, decode=1) as stack:
        results = asyncio.run(serving.run_workloads(stack))
        with rebalance.prometheus(stack) as url:
            decisions = asyncio.run(rebalance.run(stack, 5.0, url))
    by_label = {r.label: r for r in results}
    assert len(by_label) == 3 + 2 + serving.AGENT_TURNS
    for r in results:
        assert r.timed.ttft_s > 0 and r.timed.completion_tokens > 0
    for label in ("summary 1", "summary 2"):
        summary = by_label[label]
        assert summary.timed.completion_tokens == serving.SUMMARY_TOKENS
        # every block of the long prompt travels (nothing cached yet on the decode side)
        assert summary.kv_bytes >= summary.timed.prompt_tokens // 16 * 16 * 512
    compressed = by_label["summary 3, snapkv 50%"]
    assert compressed.timed.completion_tokens == serving.SUMMARY_TOKENS
    # about half the prompt's KV travels, in whole blocks
    full = -(-compressed.timed.prompt_tokens // 16) * 16 * 512
    assert 0.4 * full < compressed.kv_bytes < 0.6 * full
    for label in ("story 1", "story 2"):
        story = by_label[label]
        assert story.timed.completion_tokens == serving.STORY_TOKENS
        assert not math.isnan(story.timed.itl_s)
        assert story.kv_bytes == 0  # short prompt: no prefill tier, no handoff
    turns = [by_label[f"agent turn {t}"] for t in range(1, serving.AGENT_TURNS + 1)]
    lengths = [turn.timed.prompt_tokens for turn in turns]
    assert all(a < b for a, b in itertools.pairwise(lengths))
    for turn in turns[1:]:
        assert turn.prefill_hit_tokens > 0 and turn.decode_hit_tokens > 0
        # the history the decode worker already holds is not sent again
        assert turn.kv_bytes < turn.timed.prompt_tokens * 512
    (summaries, s_snap, s_plan), (stories, t_snap, t_plan) = decisions
    assert (summaries, stories) == ("summaries", "stories")
    assert s_snap.prefill.token_rate > 0 and t_snap.decode.token_rate > 0
    assert s_plan.prefill_replicas > s_plan.decode_replicas
    assert t_plan.decode_replicas > t_plan.prefill_replicas


def _scrape(time: float, **samples: float) -> Scrape:
    return Scrape(time, samples)


def test_snapshot_maps_two_scrapes_like_the_prometheus_queries():
    zero = {"prefill": [_scrape(0.0)], "decode": [_scrape(0.0), _scrape(0.0)],
            "router": [_scrape(0.0)]}
    after = {
        "prefill": [_scrape(10.0, pdserve_prompt_tokens_total=1000.0,
                            pdserve_prefix_cache_hits_total=200.0,
                            pdserve_time_to_first_token_seconds_count=4.0,
                            pdserve_time_to_first_token_seconds_sum=0.4,
                            pdserve_requests_waiting=3.0)],
        "decode": [_scrape(10.0, pdserve_generation_tokens_total=300.0,
                           pdserve_kv_usage_ratio=0.2, pdserve_requests_running=2.0),
                   _scrape(10.0, pdserve_generation_tokens_total=200.0,
                           pdserve_kv_usage_ratio=0.4, pdserve_requests_running=1.0,
                           pdserve_inter_token_latency_seconds_count=10.0,
                           pdserve_inter_token_latency_seconds_sum=0.5)],
        "router": [_scrape(10.0, pdserve_router_requests_total=5.0,
                           pdserve_time_to_first_token_seconds_count=5.0,
                           pdserve_time_to_first_token_seconds_sum=2.5)],
    }
    snap = snapshot(zero, after, now=123.0)
    assert snap.prefill.token_rate == pytest.approx(80.0)  # prefix-cache hits are not work
    assert snap.prefill.latency_seconds == pytest.approx(0.5)  # the router's TTFT first
    assert snap.prefill.waiting == 3.0
    assert snap.decode.token_rate == pytest.approx(50.0)
    assert snap.decode.latency_seconds == pytest.approx(0.05)  # no router ITL: the workers'
    assert snap.decode.running == 3.0 and snap.decode.kv_usage == pytest.approx(0.3)
    assert snap.arrival_rate == pytest.approx(0.5)
    assert snap.decode.request_rate == 0.0


def test_cli_rejects_bad_flags(capsys):
    args = parser().parse_args(["--keep", "--skip-cluster", "--window", "3"])
    assert args.keep and args.skip_cluster and args.window == 3.0
    with pytest.raises(SystemExit):
        parser().parse_args(["--prefill", "0"])
    assert "must be at least 1" in capsys.readouterr().err
