"""The local half of `make demo`: the tiny model through a real router + prefill + decode.

    .venv/bin/python -m e2e.disagg_demo

Runs a summarization, a story and a 5-turn agentic session (with a tool) through the router
with the official `openai` client, streaming, and prints each request's time to first token,
mean inter-token latency, and the KV bytes the prefill worker handed to the decode worker.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import openai

from e2e.local_processes import metric, router, running, wait_for_tiers, worker
from pdserve.runtime.model_init import init_model

REPORT = (" ".join(["The quarterly report shows revenue up eight percent, costs down three, and "
                    "a new plant opening in the north next spring."] * 12))
TOOLS = [{"type": "function", "function": {
    "name": "search_flights", "description": "Find flights between two cities",
    "parameters": {"type": "object", "properties": {"origin": {"type": "string"},
                                                     "destination": {"type": "string"}},
                   "required": ["origin", "destination"]}}}]


def timed_chat(client: openai.OpenAI, messages: list[dict], max_tokens: int,
               tools: list[dict] | None = None) -> tuple[str, float, float, int]:
    """(text, TTFT, mean inter-token latency, tokens) of one streamed chat completion."""
    start = time.perf_counter()
    stamps: list[float] = []
    text = []
    extra = {"tools": tools} if tools else {}
    stream = client.chat.completions.create(model="tiny", messages=messages, stream=True,
                                            max_tokens=max_tokens, temperature=0, **extra)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
            text.append(chunk.choices[0].delta.content)
    ttft = stamps[0] - start if stamps else float("nan")
    itl = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    return "".join(text), ttft, itl, len(stamps)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        model = str(init_model(logs / "tiny"))  # once, before two processes would both write it
        prefill, decode = worker("prefill", model, logs), worker("decode", model, logs)
        with running(prefill), running(decode):
            gateway = router([prefill], [decode], logs)
            with running(gateway):
                wait_for_tiers(gateway)
                client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
                rows = [("summarization", *timed_chat(client, [
                    {"role": "user", "content": f"Summarize this report:\n{REPORT}"}], 48)),
                        ("story", *timed_chat(client, [
                    {"role": "user", "content": "Tell a story about a lighthouse keeper."}], 96))]
                history = [{"role": "system", "content": "You are a travel agent. Use tools."}]
                for turn in range(5):
                    history.append({"role": "user", "content": f"Turn {turn + 1}: plan the "
                                    f"next leg of my trip, stop {turn + 1} of 5."})
                    reply = timed_chat(client, history, 32, TOOLS)
                    history.append({"role": "assistant", "content": reply[0]})
                    rows.append((f"agent turn {turn + 1}", *reply))
                moved = metric(decode.url, "pdserve_kv_transfer_bytes_total")
                hits = metric(decode.url, "pdserve_prefix_cache_hits_total")
    print(f"{'request':16} {'tokens':>6} {'TTFT':>9} {'inter-token':>12}")
    for name, _, ttft, itl, tokens in rows:
        print(f"{name:16} {tokens:6d} {ttft * 1e3:7.1f}ms {itl * 1e3:10.2f}ms")
    print(f"KV handed over prefill -> decode: {moved / 1024:.1f} KiB "
          f"(decode prefix-cache hits: {hits:.0f} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
