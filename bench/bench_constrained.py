"""What constrained decoding costs, every figure measured side by side in ONE run (prints,
never asserts).

    .venv/bin/python -m bench.bench_constrained [--only overhead,compile,agent] [--model M]

overhead: 32 requests at once on the `small` model (random weights), greedy, under a grammar
  against the same prompts unconstrained, each of those generating exactly as many tokens as
  its constrained twin (ignore_eos); tokens/s of the whole run (prefill included, identical in
  both), runs alternated: chat prompts with three tools under tool_choice "required"
  (prefill-heavy), and short prompts under JSON-object mode (decode-heavy).
compile: building the vocabulary tables (once per worker), then compiling the tool set and a
  response JSON schema cold (a fresh compiler) and cached (the same spec again).
agent: a 10-turn agent session (each turn's tool call answered by a tool result, the context
  growing), with prefix caching: per turn, TTFT, prompt tokens served from the cache, tokens
  generated and whether the turn's tool call parsed and validated, constrained vs not.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jsonschema

from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.grammar.compiler import GrammarCompiler
from pdserve.runtime.grammar.spec import (
    DEFAULT_MAX_WHITESPACE,
    Tool,
    json_grammar,
    tool_call_grammar,
)
from pdserve.runtime.serving.tool_calls import parse_tool_calls

SCHEMAS: dict[str, dict[str, Any]] = {
    "get_weather": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 16},
        "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]},
    "search": {"type": "object", "properties": {
        "query": {"type": "string", "maxLength": 20},
        "limit": {"type": "integer", "minimum": 1, "maximum": 50}},
        "required": ["query", "limit"]},
    "book_flight": {"type": "object", "properties": {
        "origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "passengers": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
            "type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                             "age": {"type": "integer", "minimum": 0,
                                                     "maximum": 120}},
            "required": ["name", "age"]}}},
        "required": ["origin", "destination", "passengers"]},
}
TOOLS = [Tool(name, schema) for name, schema in SCHEMAS.items()]
TEMPLATE_TOOLS = [{"type": "function", "function": {"name": t.name, "parameters": t.parameters}}
                  for t in TOOLS]
ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40},
                                           "confidence": {"type": "number"}},
          "required": ["answer", "confidence"]}
REQUIRED = tool_call_grammar(TOOLS, "required", False, None, DEFAULT_MAX_WHITESPACE)
QUESTIONS = ["What is the weather in Paris?", "Find papers on paged attention.",
             "Book a flight from OSL to CDG for two.", "Is it raining in Rome?"]


def engine(model: str) -> LLMEngine:
    return LLMEngine(EngineConfig(model=model, device="cpu", dtype="float32", num_kv_blocks=4096,
                                  max_num_seqs=64, max_num_batched_tokens=2048))


def chat_ids(e: LLMEngine, messages: list[dict[str, Any]]) -> list[int]:
    text = e.tokenizer.apply_chat_template(messages, tools=TEMPLATE_TOOLS,
                                           add_generation_prompt=True)
    return e.tokenizer.encode(text, add_special_tokens=False)


def run(e: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]
        ) -> tuple[dict[str, list[int]], float]:
    started = time.perf_counter()
    for i, (ids, p) in enumerate(zip(prompts, params, strict=True)):
        e.add_request(f"r{i}", ids, p)
    out: dict[str, list[int]] = {}
    while e.has_unfinished():
        for o in e.step():
            out.setdefault(o.request_id, []).extend(o.token_ids)
    return out, time.perf_counter() - started


def _side_by_side(e: LLMEngine, prompts: list[list[int]], grammar: str, max_tokens: int
                  ) -> tuple[dict[str, list[float]], list[int]]:
    """tokens/s constrained and unconstrained (each request as long as its constrained twin)."""
    e.grammars.compile(grammar)
    constrained = [SamplingParams(max_tokens=max_tokens, temperature=0.0, grammar=grammar)
                   for _ in prompts]
    outputs, _ = run(e, prompts, constrained)  # warm-up; sets each request's length
    lengths = [len(outputs[f"r{i}"]) for i in range(len(prompts))]
    free = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths]
    rates: dict[str, list[float]] = {"constrained": [], "unconstrained": []}
    for _ in range(2):
        for name, params in (("constrained", constrained), ("unconstrained", free)):
            outputs, seconds = run(e, prompts, params)
            rates[name].append(sum(map(len, outputs.values())) / seconds)
    return rates, lengths


def overhead(model: str) -> None:
    e = engine(model)
    chats = [chat_ids(e, [{"role": "user", "content": f"{QUESTIONS[i % 4]} ({i})"}])
             for i in range(32)]
    short = [[10 + (i * 7 + j) % 3000 for j in range(16)] for i in range(32)]
    workloads = (("tool call, tool_choice required (3 tools; prompts of ~560 tokens)", chats,
                  REQUIRED, 512),
                 ("JSON object, 256 tokens (16-token prompts)", short,
                  json_grammar(None, DEFAULT_MAX_WHITESPACE), 256))
    print(f"\n## Per-token overhead ({model}, 32 requests at once, greedy; each unconstrained "
          "request generates as many tokens as its constrained twin)")
    print("| workload | tokens per run | constrained tokens/s | unconstrained tokens/s | "
          "ratio |")
    print("|---|---|---|---|---|")
    for label, prompts, grammar, max_tokens in workloads:
        rates, lengths = _side_by_side(e, prompts, grammar, max_tokens)
        with_, without = max(rates["constrained"]), max(rates["unconstrained"])
        print(f"| {label} | {sum(lengths)} | "
              f"{' / '.join(f'{v:.0f}' for v in rates['constrained'])} | "
              f"{' / '.join(f'{v:.0f}' for v in rates['unconstrained'])} | "
              f"{with_ / without:.2f}x |")


def compile_times(model: str) -> None:
    e = engine(model)
    print(f"\n## Grammar compile time ({model}, vocabulary {e.model_config.vocab_size:,})")
    print("| what | cold | cached |")
    print("|---|---|---|")
    started = time.perf_counter()
    e.grammars.warm_up()
    print(f"| vocabulary tables (once per worker) | {time.perf_counter() - started:.3f} s | - |")
    for label, spec in (("3 tools, tool_choice required", REQUIRED),
                        ("3 tools, tool_choice auto",
                         tool_call_grammar(TOOLS, "auto", True, None, DEFAULT_MAX_WHITESPACE)),
                        ("response_format json_schema", json_grammar(ANSWER,
                                                                     DEFAULT_MAX_WHITESPACE))):
        fresh = GrammarCompiler(e.tokenizer, e.model_config.vocab_size, set(
            e.scheduler.eos_token_ids), 64 << 20)
        fresh.warm_up()
        started = time.perf_counter()
        fresh.compile(spec)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        fresh.compile(spec)
        cached = time.perf_counter() - started
        print(f"| {label} | {cold * 1e3:.1f} ms | {cached * 1e3:.3f} ms |")


def _valid_call(text: str) -> tuple[bool, list[Any]]:
    _, calls = parse_tool_calls(text)
    if not calls:
        return False, []
    try:
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    except (KeyError, json.JSONDecodeError, jsonschema.ValidationError):
        return False, calls
    return True, calls


def agent(model: str, turns: int = 10) -> None:
    print(f"\n## A {turns}-turn agent session ({model}, prefix caching, greedy; each turn's "
          "call answered by a tool result)")
    print("| decoding | turn | prompt tokens | from cache | TTFT | tokens generated | "
          "valid call |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for name in ("constrained", "unconstrained"):
        e = engine(model)
        # Warm-up on a prompt sharing no prefix with the session (first-call costs of the
        # kernels and of xgrammar's matcher are not a turn's).
        run(e, [list(range(10, 40)), [7 + i % 3000 for i in range(600)]],
            [SamplingParams(max_tokens=16, temperature=0.0, grammar=REQUIRED)] * 2)
        messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTIONS[2]}]
        valid_turns, generated = 0, 0
        for turn in range(1, turns + 1):
            ids = chat_ids(e, messages)
            params = SamplingParams(max_tokens=256, temperature=0.0,
                                    grammar=REQUIRED if name == "constrained" else None)
            started = time.perf_counter()
            e.add_request(f"t{turn}", ids, params)
            tokens: list[int] = []
            text, ttft, cached = "", None, 0
            while e.has_unfinished():
                for o in e.step():
                    if ttft is None and o.token_ids:
                        ttft = time.perf_counter() - started
                    tokens += o.token_ids
                    text += o.text
                    cached = o.num_cached_tokens
            valid, calls = _valid_call(text)
            valid_turns += valid
            generated += len(tokens)
            print(f"| {name} | {turn} | {len(ids)} | {cached} | {(ttft or 0) * 1e3:.1f} ms | "
                  f"{len(tokens)} | {'yes' if valid else 'no'} |")
            if calls:
                messages.append({"role": "assistant", "content": None, "tool_calls": [
                    {"id": f"c{turn}", "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments}} for c in calls]})
            else:
                messages.append({"role": "assistant", "content": text})
            messages.append({"role": "tool", "tool_call_id": f"c{turn}",
                             "content": json.dumps({"result": f"done {turn}"})})
        summary[name] = (valid_turns, generated)
    for name, (valid_turns, generated) in summary.items():
        print(f"{name}: {valid_turns}/{turns} turns with a valid call, {generated} tokens")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="overhead,compile,agent")
    parser.add_argument("--model", default="builtin:small")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    if "overhead" in parts:
        overhead(args.model)
    if "compile" in parts:
        compile_times(args.model)
    if "agent" in parts:
        agent(args.model)


if __name__ == "__main__":
    main()
