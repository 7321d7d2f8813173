"""What KV compression costs and saves, every figure measured side by side in ONE run (prints,
never asserts).

    .venv/bin/python -m bench.bench_kv_compression [--only quality,bytes,decode] [--samples 96]
        [--model DIR]

quality: passage-recall accuracy of the project's trained model (bench/quality/recall.py), or
  of the checkpoint `--model` names, at four context lengths, uncompressed vs snapkv (two
  observation windows) and streaming at 50% and 25% of the prompt's KV:
  the share of answer tokens right after the first (those are decoded over the kept KV only;
  the first comes from the prefill's full attention) and of prompts with the whole answer right.
bytes: prompt KV a prefill engine hands to decode (blocks x bytes per block) per snapkv ratio,
  on the `small` model with 1,000-token prompts.
decode: the `small` model decoding 8 sequences with 1,500-token prompts: decode tokens/s and
  KV blocks per sequence, uncompressed vs snapkv 50% / 25% vs streaming (512-token window);
  and two sequences generating 10x longer under streaming (their KV stays flat).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.quality.recall import RECALL_VOCABULARY, VALUE_TOKENS, Vocabulary, recall_model, sample
from pdserve.runtime.checkpoints.builtin import resolve_model_path
from pdserve.runtime.compression.config import POOL_KERNEL, KVCompression
from pdserve.runtime.engine.llm_engine import EngineConfig, LLMEngine
from pdserve.runtime.engine.sampling_params import SamplingParams

# Passage lengths of the quality table (the model was trained on 16 to 256).
PASSAGES = (32, 64, 128, 256)
# Observation windows: the query (Q, cue) and the passage's last two tokens; and the API's
# default (where the budget holds more than the window).
SNAPKV_WINDOWS = (4, 32)
STREAMING_SINKS = 4


def engine(model: str, compression: KVCompression, **overrides: object) -> LLMEngine:
    config = dict(model=model, device="cpu", dtype="float32", num_kv_blocks=4096,
                  max_num_seqs=64, max_num_batched_tokens=2048, kv_compression=compression)
    return LLMEngine(EngineConfig(**{**config, **overrides}))  # type: ignore[arg-type]


def run(e: LLMEngine, prompts: list[list[int]], params: SamplingParams
        ) -> dict[str, list[int]]:
    for i, ids in enumerate(prompts):
        e.add_request(f"r{i}", ids, params)
    out: dict[str, list[int]] = {}
    while e.has_unfinished():
        for o in e.step():
            out.setdefault(o.request_id, []).extend(o.token_ids)
    return out


def streaming_for(fraction: float, prompt_len: int) -> KVCompression:
    window = max(1, round(fraction * prompt_len) - STREAMING_SINKS)
    return KVCompression("streaming", window_tokens=window, sink_tokens=STREAMING_SINKS)


def vocabulary_of(model: str) -> Vocabulary:
    """Recall prompts in another checkpoint's ids: passage tokens from a band of ordinary ids
    (past the specials at the start of most vocabularies, short of the added ones at the end),
    the query marker just below that band."""
    config = json.loads((Path(resolve_model_path(model)) / "config.json").read_text())
    vocab_size = int(config["vocab_size"])
    first = vocab_size // 8
    bos = config.get("bos_token_id")
    return Vocabulary(range(first, first + min(4096, vocab_size // 2)), first - 1,
                      bos if isinstance(bos, int) else None)


def quality(samples: int, model: str | None) -> None:
    vocabulary = RECALL_VOCABULARY if model is None else vocabulary_of(model)
    model = str(recall_model()) if model is None else model
    params = SamplingParams(max_tokens=VALUE_TOKENS, temperature=0.0)
    print("\n## Passage recall accuracy (answer tokens 2-4 right, and whole answers right)")
    print(f"model: {model}; {samples} prompts per context length; greedy; snapkv max-pool "
          f"{POOL_KERNEL}; streaming sinks {STREAMING_SINKS}")
    print("| context (tokens) | method | target KV | KV kept (measured) | tokens 2-4 right | "
          "answers right | of uncompressed |")
    print("|---|---|---|---|---|---|---|")
    for length in PASSAGES:
        rng = random.Random(1000 + length)
        tasks = [sample(rng, length, vocabulary=vocabulary) for _ in range(samples)]
        prompts = [t.prompt for t in tasks]
        mean_len = sum(map(len, prompts)) / len(prompts)
        methods: list[tuple[str, float, KVCompression]] = [("none", 1.0, KVCompression())]
        for fraction in (0.5, 0.25):
            for window in SNAPKV_WINDOWS:
                if window < fraction * mean_len:
                    methods.append((f"snapkv (window {window})", fraction, KVCompression(
                        "snapkv", ratio=fraction, window_tokens=window)))
            methods.append(("streaming", fraction, streaming_for(fraction, round(mean_len))))
        baseline = None
        for name, fraction, compression in methods:
            e = engine(model, compression, block_size=8)  # streaming evicts whole blocks
            outputs = run(e, prompts, params)
            kept = 1 - e.stats().kv_tokens_pruned / sum(map(len, prompts))
            right = whole = 0
            for i, task in enumerate(tasks):
                got = outputs[f"r{i}"]
                hits = sum(a == b for a, b in zip(got[1:], task.values[1:], strict=False))
                right += hits
                whole += got == task.values
            accuracy = right / (samples * (VALUE_TOKENS - 1))
            baseline = accuracy if baseline is None else baseline
            relative = f"{accuracy / baseline:.0%}" if baseline else "n/a"
            print(f"| {mean_len:.0f} | {name} | {fraction:.0%} | {kept:.0%} | {accuracy:.1%} | "
                  f"{whole / samples:.1%} | {relative} |")


def handed_bytes() -> None:
    print("\n## Prompt KV handed from prefill to decode (small model, 1,000-token prompts)")
    print("| snapkv ratio | blocks per prompt | KV bytes per prompt | vs uncompressed |")
    print("|---|---|---|---|")
    rng = random.Random(7)
    prompts = [[rng.randrange(3, 4000) for _ in range(1000)] for _ in range(4)]
    params = SamplingParams(max_tokens=1, temperature=0.0)
    full = None
    for ratio in (None, 0.5, 0.25, 0.1):
        compression = KVCompression() if ratio is None else KVCompression("snapkv", ratio=ratio)
        e = engine("builtin:small", compression)
        blocks = 0
        for i, ids in enumerate(prompts):
            e.prefill_only(f"p{i}", ids, params)
        while e.has_unfinished():
            e.step()
        for i in range(len(prompts)):
            blocks += len(e.prefilled_blocks(f"p{i}"))
            e.release(f"p{i}")
        per_prompt = blocks / len(prompts)
        nbytes = per_prompt * e.kv_layout.bytes_per_block
        full = nbytes if full is None else full
        label = "none" if ratio is None else f"{ratio}"
        print(f"| {label} | {per_prompt:.1f} | {nbytes / 2**20:.2f} MiB | {nbytes / full:.2f}x |")


def _decode_rate(e: LLMEngine, prompts: list[list[int]], max_tokens: int
                 ) -> tuple[float, float]:
    """Decode tokens/s once every prompt is prefilled, and peak KV blocks per sequence."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i, ids in enumerate(prompts):
        e.add_request(f"r{i}", ids, params)
    decoded, peak, started = 0, 0, None
    while e.has_unfinished():
        outputs = e.step()
        if started is None and all(o.token_ids for o in outputs) and len(outputs) == len(
                prompts):
            started, decoded = time.perf_counter(), 0
            continue
        decoded += sum(len(o.token_ids) for o in outputs)
        peak = max(peak, e.block_manager.num_used_blocks)
    assert started is not None
    return decoded / (time.perf_counter() - started), peak / len(prompts)


def decode() -> None:
    print("\n## Decode on long contexts (small model, 8 sequences of 1,500 prompt tokens, "
          "128 new tokens each)")
    print("| method | decode tokens/s | KV blocks per sequence | vs uncompressed |")
    print("|---|---|---|---|")
    rng = random.Random(9)
    prompts = [[rng.randrange(3, 4000) for _ in range(1500)] for _ in range(8)]
    configs: list[tuple[str, Callable[[], KVCompression]]] = [
        ("none", KVCompression), ("snapkv 50%", lambda: KVCompression("snapkv", ratio=0.5)),
        ("snapkv 25%", lambda: KVCompression("snapkv", ratio=0.25)),
        ("streaming 512", lambda: KVCompression("streaming", window_tokens=512)),
    ]
    base_rate = base_blocks = None
    for name, make in configs:
        rate, blocks = _decode_rate(engine("builtin:small", make()), prompts, 128)
        base_rate = base_rate or rate
        base_blocks = base_blocks or blocks
        print(f"| {name} | {rate:.0f} | {blocks:.1f} | {rate / base_rate:.2f}x speed, "
              f"{blocks / base_blocks:.2f}x KV |")
    print("\nStreaming (256-token window) over a 10x longer generation, two sequences of 200 "
          "prompt tokens:")
    print("| new tokens | peak KV blocks per sequence, none | same, streaming |")
    print("|---|---|---|")
    for max_tokens in (200, 2000):
        row = []
        for compression in (KVCompression(), KVCompression("streaming", window_tokens=256)):
            _, blocks = _decode_rate(engine("builtin:small", compression, max_num_seqs=2),
                                     [prompts[0][:200], prompts[1][:200]], max_tokens)
            row.append(blocks)
        print(f"| {max_tokens} | {row[0]:.0f} | {row[1]:.0f} |")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="quality,bytes,decode")
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--model", help="score this checkpoint instead of the trained recall "
                        "model (a directory in Hugging Face layout)")
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    only = set(args.only.split(","))
    if "quality" in only:
        quality(args.samples, args.model)
    if "bytes" in only:
        handed_bytes()
    if "decode" in only:
        decode()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
