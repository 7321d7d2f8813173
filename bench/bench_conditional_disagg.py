"""Conditional disaggregation against aggregated serving and always-on disaggregation, at low
and at high load, side by side in one run (issue 15).

    .venv/bin/python -m bench.bench_conditional_disagg [--model builtin:tiny] [--low-rate 2]
        [--high-rate 24] [--seconds 20] [--write bench/results/conditional_disagg.md]

Real processes on loopback: one prefill and one decode worker (CPU), and three routers in front
of them, started together: `aggregated` (no prefill tier: the decode worker prefills every
prompt), `always` (--disaggregation always, --short-prompt-threshold 0: every prompt through the
prefill tier) and `conditional` (--disaggregation conditional, the default; threshold 32 until
it has measured a prefill, which the warm-up's prompts of several lengths do). The load is
bench_disagg's mix (20% long prompts of 300-500 words with 16 output tokens, 80% chat turns of
5-40 words with 48), Poisson, sent by guidellm (bench/load_tool.py), streaming with ignore_eos;
every prompt starts with its phase's tag, so no phase finds another's prompts in a prefix cache.
Each load level runs the setups in the order aggregated, always, conditional and then backwards
(ABC CBA), so a drift in the shared machine's load weighs on each setup alike; figures are the
mean of each setup's two phases. TTFT and ITL are guidellm's (ITL: each request's mean gap
between tokens, percentiles weighted by tokens); its reports are kept as
bench/out/conditional-<phase>.json (git-ignored: megabytes). Goals: at low load conditional's
TTFT (p50 and p90) no more than 1.1x aggregated's; at high load its ITL p95 within 10% of
always's. Prints, never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.bench_disagg import WORDS, workload
from bench.load_tool import (
    GUIDELLM_VERSION,
    Figures,
    Load,
    ToolUnavailable,
    ensure_guidellm,
    run_guidellm,
)
from e2e.local_processes import metric_by_label, router, running, wait_for_tiers, worker
from pdserve.runtime.checkpoints.builtin import resolve_model_path

REPO = Path(__file__).resolve().parent.parent
SETUPS = ("aggregated", "always", "conditional")


@dataclass
class Phase:
    level: str
    setup: str
    figures: Figures
    decisions: dict[str, float]  # pdserve_router_disaggregation_total increase, by reason


def decisions(url: str) -> dict[str, float]:
    return metric_by_label(url, "pdserve_router_disaggregation_total", "reason")


def tagged_rows(rate: float, seconds: float, tag: str, seed: int) -> list[dict]:
    rows = workload(rate, seconds, seed)
    for i, row in enumerate(rows):
        row["prompt"] = f"[{tag} {i}] {row['prompt']}"
    return rows


def warm_up(url: str) -> None:
    """Prompts of several lengths, so the conditional router's first prefills (sent by the
    threshold) measure the per-token cost apart from the fixed one."""
    for n, words in enumerate((12, 40, 120, 250, 400, 60)):
        text = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(words))
        body = json.dumps({"model": "tiny", "prompt": f"[warm-up {n}] {text}", "max_tokens": 4,
                           "temperature": 0}).encode()
        request = urllib.request.Request(url + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            resp.read()


def mean_figures(phases: list[Phase]) -> dict[str, float]:
    keys = ("ttft_p50", "ttft_p90", "itl_p50", "itl_p95", "output_tok_s")
    return {k: sum(getattr(p.figures, k) for p in phases) / len(phases) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--low-rate", type=float, default=2.0, help="requests per second")
    parser.add_argument("--high-rate", type=float, default=24.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="of load per phase")
    parser.add_argument("--write", type=Path, help="markdown summary")
    args = parser.parse_args()
    try:
        ensure_guidellm()
    except ToolUnavailable as exc:
        print(f"bench_conditional_disagg: guidellm unavailable: {exc}", file=sys.stderr)
        sys.exit(2)
    load_before = os.getloadavg()[0]
    processor = resolve_model_path(args.model)
    reports = REPO / "bench" / "out"  # git-ignored: guidellm's reports run to megabytes
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        prefill, decode = worker("prefill", args.model, logs), worker("decode", args.model, logs)
        with running(prefill, decode):
            routers = {
                "aggregated": router([], [decode], logs),
                "always": router([prefill], [decode], logs, "--disaggregation", "always",
                                 "--short-prompt-threshold", "0"),
                "conditional": router([prefill], [decode], logs, "--disaggregation",
                                      "conditional", "--short-prompt-threshold", "32"),
            }
            with running(*routers.values()):
                for name, gateway in routers.items():
                    if name != "aggregated":
                        wait_for_tiers(gateway)
                    warm_up(gateway.url)
                for level, rate in (("low", args.low_rate), ("high", args.high_rate)):
                    for n, setup in enumerate((*SETUPS, *reversed(SETUPS))):
                        tag = f"{level}-{n}-{setup}"
                        rows = tagged_rows(rate, args.seconds, tag, seed=n)
                        data = logs / f"{tag}.jsonl"
                        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
                        load = Load(profile="poisson", rate=rate, data_file=data,
                                    max_requests=len(rows),
                                    max_seconds=max(120.0, 6 * args.seconds), sample_size=10)
                        url = routers[setup].url
                        before = decisions(url)
                        figures = run_guidellm(url, load, reports / f"conditional-{tag}.json",
                                               processor, log=logs / f"guidellm-{tag}.log")[0]
                        after = decisions(url)
                        phases.append(Phase(level, setup, figures, {
                            k: after[k] - before.get(k, 0.0) for k in after
                            if after[k] > before.get(k, 0.0)}))
                        print(f"{tag}: TTFT p50 {figures.ttft_p50:.1f} ms, ITL p95 "
                              f"{figures.itl_p95:.1f} ms", flush=True)
    text = report(args, phases, load_before)
    print(text)
    if args.write:
        args.write.write_text(
            "# Conditional disaggregation vs aggregated and always-on (guidellm)\n\n"
            f"    .venv/bin/python -m bench.bench_conditional_disagg --model {args.model} "
            f"--low-rate {args.low_rate:g} --high-rate {args.high_rate:g} "
            f"--seconds {args.seconds:g} --write {args.write}\n\n```\n{text}\n```\n")


def report(args: argparse.Namespace, phases: list[Phase], load_before: float) -> str:
    lines = [f"guidellm {GUIDELLM_VERSION}, Poisson, ~{args.seconds:g} s a phase, model "
             f"{args.model}; low load {args.low_rate:g} req/s, high load {args.high_rate:g} "
             "req/s; phases ABC CBA per level",
             f"{'phase':28} {'TTFT p50':>9} {'TTFT p90':>9} {'ITL p50':>8} {'ITL p95':>8} "
             f"{'tok/s':>7} {'ok/err/inc':>10}  decisions"]
    for n, p in enumerate(phases):
        f = p.figures
        lines.append(f"{f'{p.level} {n % 6} {p.setup}':28} {f.ttft_p50:7.1f}ms {f.ttft_p90:7.1f}ms "
                     f"{f.itl_p50:6.1f}ms {f.itl_p95:6.1f}ms {f.output_tok_s:7.1f} "
                     f"{f'{f.successes}/{f.errors}/{f.incomplete}':>10}  "
                     + ", ".join(f"{k} {v:.0f}" for k, v in sorted(p.decisions.items())))
    means = {(level, setup): mean_figures([p for p in phases
                                          if p.level == level and p.setup == setup])
             for level in ("low", "high") for setup in SETUPS}
    lines.append("")
    lines.append(f"{'mean of both phases':28} {'TTFT p50':>9} {'TTFT p90':>9} {'ITL p50':>8} "
                 f"{'ITL p95':>8} {'tok/s':>7}")
    for (level, setup), m in means.items():
        lines.append(f"{f'{level} {setup}':28} {m['ttft_p50']:7.1f}ms {m['ttft_p90']:7.1f}ms "
                     f"{m['itl_p50']:6.1f}ms {m['itl_p95']:6.1f}ms {m['output_tok_s']:7.1f}")
    low_c, low_a = means[("low", "conditional")], means[("low", "aggregated")]
    high_c, high_d = means[("high", "conditional")], means[("high", "always")]
    p50 = low_c["ttft_p50"] / low_a["ttft_p50"]
    p90 = low_c["ttft_p90"] / low_a["ttft_p90"]
    itl = high_c["itl_p95"] / high_d["itl_p95"]
    lines.append(f"low load: conditional TTFT p50 {p50:.2f}x, p90 {p90:.2f}x aggregated "
                 f"(goal <= 1.1x): {'met' if max(p50, p90) <= 1.1 else 'NOT met'}")
    lines.append(f"high load: conditional ITL p95 {itl:.2f}x always (goal <= 1.1x): "
                 f"{'met' if itl <= 1.1 else 'NOT met'}")
    lines.append(f"machine: {os.cpu_count()} cores, 1-minute load average {load_before:.1f} "
                 f"before the run, {os.getloadavg()[0]:.1f} after")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
