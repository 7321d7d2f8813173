"""The conditional disaggregation's decision (router/disagg_policy.py), pure: an idle decode
worker prefills a prompt itself, one whose local prefills already take their budget of its time
hands it to the prefill tier unless that is slower still, the threshold decides until a prefill
has been measured and in mode `always`."""

from __future__ import annotations

import math

import pytest

from pdserve.router.disagg_policy import (
    BUDGET_WINDOW_SECONDS,
    LOCAL_PREFILL_BUDGET,
    LinearFit,
    LocalPrefills,
    PrefillTimings,
    RequestSignals,
    choose_path,
)
from pdserve.router.metrics import LOCAL_CHEAPER, PREFILL_DECODE, SHORT_PROMPT


def signals(**changes) -> RequestSignals:
    base = {"tokens": 500, "decode_cached": 0, "prefill_cached": 0, "decode_streams": 0,
            "decode_has_room": True, "prefill_queue": 0, "decode_local_share": 0.0}
    return RequestSignals(**{**base, **changes})


def measured(seconds_per_token: float = 1e-4, handoff: float = 1e-5,
             hop: float = 0.002) -> PrefillTimings:
    timings = PrefillTimings()
    timings.observe(1000, 1000 * seconds_per_token, 1000 * handoff,
                    1000 * (seconds_per_token + handoff) + hop, idle_worker=True)
    return timings


def test_threshold_until_a_prefill_is_measured_and_in_mode_always():
    for mode, timings in (("conditional", PrefillTimings()), ("always", measured())):
        assert choose_path(mode, signals(tokens=7), timings, 8) == SHORT_PROMPT
        assert choose_path(mode, signals(tokens=8), timings, 8) == PREFILL_DECODE


SPENT = LOCAL_PREFILL_BUDGET  # a decode worker whose local prefills took their whole budget


def test_idle_decode_worker_prefills_itself_busy_one_hands_off():
    timings = measured()
    assert choose_path("conditional", signals(), timings, 8) == LOCAL_CHEAPER
    assert choose_path("conditional", signals(decode_local_share=SPENT), timings,
                       8) == LOCAL_CHEAPER  # no stream to hold up
    # within the budget a stream or three are held up: 50 ms is 0.5% of the window
    assert choose_path("conditional", signals(decode_streams=3), timings, 8) == LOCAL_CHEAPER
    # beyond it, 500 tokens at 0.1 ms stall each of 3 streams 50 ms: more than the handoff's
    busy = signals(decode_streams=3, decode_local_share=SPENT)
    assert choose_path("conditional", busy, timings, 8) == PREFILL_DECODE
    # a short prompt stalls them 0.5 ms each, 1.5 ms in all: less than the hop's 2 ms
    assert choose_path("conditional", signals(tokens=5, decode_streams=3,
                                              decode_local_share=SPENT), timings,
                       8) == LOCAL_CHEAPER


def test_a_queued_prefill_tier_keeps_prompts_local():
    timings = measured()  # one idle prefill took 0.1 s
    busy = signals(decode_streams=3, decode_local_share=SPENT)
    assert choose_path("conditional", busy, timings, 8) == PREFILL_DECODE
    assert choose_path("conditional", signals(decode_streams=3, prefill_queue=2,
                                              decode_local_share=SPENT), timings,
                       8) == LOCAL_CHEAPER


def test_prefix_caches_count():
    timings = measured()
    # the decode worker holds all but 10 tokens: little to stall anyone with
    assert choose_path("conditional", signals(decode_streams=3, decode_cached=490,
                                              decode_local_share=SPENT), timings,
                       8) == LOCAL_CHEAPER
    # the prefill worker holds the prompt: faster there, even for an idle decode worker
    assert choose_path("conditional", signals(prefill_cached=500), timings, 8) == PREFILL_DECODE


def test_local_prefills_share_decays_over_the_window():
    prefills = LocalPrefills()
    prefills.add(100.0, 0.5)
    assert prefills.share(100.0) == pytest.approx(0.5 / BUDGET_WINDOW_SECONDS)
    prefills.add(100.0, 0.5)
    assert prefills.share(100.0 + BUDGET_WINDOW_SECONDS) == pytest.approx(
        1.0 / BUDGET_WINDOW_SECONDS / math.e)


def test_no_kv_room_on_the_decode_worker_prefills_elsewhere_meanwhile():
    assert choose_path("conditional", signals(decode_has_room=False), measured(),
                       8) == PREFILL_DECODE


def test_timings_learn_compute_only_from_idle_workers():
    timings = PrefillTimings()
    timings.observe(100, 0.5, 0.01, 0.52, idle_worker=False)  # 0.5 s includes a queue
    assert not timings.measured
    assert timings.handoff.predict(100) == pytest.approx(0.01)
    assert timings.hop_seconds == pytest.approx(0.01)
    timings.observe(100, 0.01, 0.01, 0.03, idle_worker=True)
    assert timings.compute.per_token() == pytest.approx(1e-4)  # one length: the mean ratio
    assert timings.compute.mean_seconds() == pytest.approx(0.01)


def test_the_fit_separates_a_prefills_fixed_cost_from_its_per_token_cost():
    fit = LinearFit()
    for tokens in (10, 500, 40, 300, 20, 450) * 5:
        fit.add(tokens, 0.008 + 2e-5 * tokens)  # an 8 ms step, 20 us a token
    assert fit.per_token() == pytest.approx(2e-5)
    assert fit.predict(1000) == pytest.approx(0.028)
    # a short prompt stalls 3 streams 3 x 30 x 20 us = 1.8 ms, not 3 x 30 x the mean ratio
    timings = PrefillTimings()
    timings.compute = fit
    assert choose_path("conditional", signals(tokens=30, decode_streams=3,
                                              decode_local_share=SPENT), timings,
                       8) == LOCAL_CHEAPER
