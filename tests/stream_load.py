"""Many concurrent OpenAI requests, some of them malformed, and what each one got back (a helper
of test_reliability_streams.py, not a test module).

`plan(n)` builds the mix: valid chat and completion requests (mostly streaming), malformed ones
of four kinds (bad JSON, wrong types, prompts over the context, invalid sampling parameters),
each with the word its 400's message must contain, and clients that leave after the first
chunk of a valid stream. `send(session, url, spec)` sends one and returns an `Outcome`;
`problems(spec, outcome)` says what, if anything, is wrong with it.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp

MODEL = "tiny"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
VALID, VANISH = "valid", "vanish"
MALFORMED = ("bad_json", "wrong_type", "over_context", "bad_sampling")
WORDS = ("alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "lantern", "harbor")
OVER_CONTEXT = " ".join(["overflow"] * 2600)  # > the tiny model's 2,048-token context


@dataclass
class Spec:
    index: int
    kind: str  # VALID, VANISH or one of MALFORMED
    path: str
    body: bytes
    stream: bool
    expect: str = ""  # malformed: a word the 400's message must contain (case-insensitive)
    max_tokens: int = 0


@dataclass
class Outcome:
    status: int = 0
    text: str = ""  # the whole body (non-streaming, or an error)
    events: list[str] = field(default_factory=list)  # the `data:` payloads of a stream
    error: str = ""  # a client-side failure (connection reset, timeout, ...)


def _prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40)))


def _valid_body(rng: random.Random, path: str, stream: bool, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": max_tokens, "stream": stream}
    if path == CHAT:
        body["messages"] = [{"role": "user", "content": _prompt(rng)}]
        if rng.random() < 0.3:
            body["messages"].insert(0, {"role": "system", "content": "Answer briefly."})
    else:
        body["prompt"] = _prompt(rng)
    if rng.random() < 0.5:
        body["temperature"] = 0
    else:
        body.update(temperature=0.8, top_p=0.9, top_k=50, seed=rng.randint(0, 10_000))
    if stream and rng.random() < 0.3:
        body["stream_options"] = {"include_usage": True}
    if rng.random() < 0.1:
        body["priority"] = rng.choice((None, -1, 3))
    return body


def _chat_or_completion(rng: random.Random) -> tuple[str, dict[str, Any]]:
    path = rng.choice((CHAT, COMPLETIONS))
    return path, _valid_body(rng, path, rng.random() < 0.8, 4)


def _malformed(kind: str, variant: int, rng: random.Random) -> tuple[str, bytes, str]:
    """(path, raw body, word its error message must name) of one malformed request."""
    path, body = _chat_or_completion(rng)
    if kind == "bad_json":
        raw = [b'{"model": "tiny", "prompt": "hi", "max_tokens": 4', b"{not json", b"",
               b"\xff\xfe\x00garbage", b'["a", "list"]',
               b'{"model": "tiny", "prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
               ][variant % 6]
        return path, raw, "JSON"
    if kind == "wrong_type":
        changes: list[tuple[str, dict[str, Any], str]] = [
            (COMPLETIONS, {"max_tokens": "ten"}, "max_tokens"),
            (CHAT, {"messages": "hello"}, "messages"),
            (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages"),
            (COMPLETIONS, {"prompt": {"text": "hi"}}, "prompt"),
            (CHAT, {"temperature": "hot"}, "temperature"),
            (COMPLETIONS, {"stop": 7}, "stop"),
            (CHAT, {"priority": "high"}, "priority"),
            (COMPLETIONS, {"priority": float("inf")}, "priority"),
            (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ]
        path, change, word = changes[variant % len(changes)]
        body = _valid_body(rng, path, rng.random() < 0.8, 4)
        body.update(change)
        return path, json.dumps(body).encode(), word
    if kind == "over_context":
        if path == CHAT:
            body["messages"] = [{"role": "user", "content": OVER_CONTEXT}]
        else:
            body["prompt"] = OVER_CONTEXT
        if variant % 4 == 3:  # a short prompt, but more output than the context holds
            body["prompt" if path == COMPLETIONS else "messages"] = (
                "hello" if path == COMPLETIONS else [{"role": "user", "content": "hello"}])
            body["max_tokens"] = 4096
        return path, json.dumps(body).encode(), "context length"
    assert kind == "bad_sampling"
    changes = [
        ({"temperature": -1}, "temperature"), ({"top_p": 2}, "top_p"), ({"n": 0}, "n"),
        ({"top_k": -1}, "top_k"), ({"max_tokens": 0}, "max_tokens"), ({"top_p": 0}, "top_p"),
        ({"n": 3}, "n"), ({"max_tokens": -5}, "max_tokens"),
        ({"temperature": float("inf")}, "temperature"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"), ({"stop": [""]}, "stop"),
        ({"seed": 2**70}, "seed"), ({"top_k": 10**30}, "top_k"),
    ]
    change, word = changes[variant % len(changes)]
    body.update(temperature=0.7)  # sampled, not greedy: top_k and seed are used
    body.update(change)
    return path, json.dumps(body).encode(), word


def plan(n: int = 1000, seed: int = 18, bad_fraction: float = 0.1) -> list[Spec]:
    """`n` requests in a shuffled order: `bad_fraction` of them misbehave, spread evenly over
    the four malformed kinds and the clients that vanish; the rest are valid."""
    rng = random.Random(seed)
    bad_kinds = (*MALFORMED, VANISH)
    per_kind = round(n * bad_fraction) // len(bad_kinds)
    kinds = [kind for kind in bad_kinds for _ in range(per_kind)]
    kinds += [VALID] * (n - len(kinds))
    rng.shuffle(kinds)
    seen: dict[str, int] = {}
    specs = []
    for index, kind in enumerate(kinds):
        variant = seen[kind] = seen.get(kind, -1) + 1
        if kind in MALFORMED:
            path, raw, word = _malformed(kind, variant, rng)
            stream = b'"stream": true' in raw
            specs.append(Spec(index, kind, path, raw, stream, expect=word))
            continue
        path, body = _chat_or_completion(rng)
        if kind == VANISH:  # long enough to be cut off well before its end
            body.update(stream=True, max_tokens=64, ignore_eos=True)
        specs.append(Spec(index, kind, path, json.dumps(body).encode(), body["stream"],
                          max_tokens=body["max_tokens"]))
    return specs


async def send(session: aiohttp.ClientSession, base_url: str, spec: Spec) -> Outcome:
    outcome = Outcome()
    try:
        async with session.post(base_url + spec.path, data=spec.body,
                                headers={"Content-Type": "application/json"}) as resp:
            outcome.status = resp.status
            if spec.kind == VANISH and resp.status == 200:
                first = await resp.content.readline()
                outcome.events.append(first.decode(errors="replace").strip())
                resp.close()  # the client vanishes: its connection closes mid-stream
                return outcome
            if resp.content_type == "text/event-stream":
                async for line in resp.content:
                    text = line.decode(errors="replace").strip()
                    if text.startswith("data:"):
                        outcome.events.append(text.removeprefix("data:").strip())
            else:
                outcome.text = await resp.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    return outcome


async def run_all(base_url: str, specs: list[Spec], timeout: float) -> list[Outcome]:
    """Every request at once (one connection each); the outcomes in `specs`' order."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        return list(await asyncio.gather(*(send(session, base_url, s) for s in specs)))


def problems(spec: Spec, outcome: Outcome) -> list[str]:
    """What is wrong with the outcome of `spec` (empty: as required)."""
    if outcome.error and spec.kind != VANISH:
        return [f"client error {outcome.error}"]
    if spec.kind == VANISH:
        return [] if outcome.status == 200 else [f"HTTP {outcome.status} {outcome.text[:200]}"]
    if spec.kind in MALFORMED:
        return _bad_request_problems(spec, outcome)
    if outcome.status != 200:
        return [f"HTTP {outcome.status}: {outcome.text[:300]}"]
    return _stream_problems(spec, outcome) if spec.stream else _whole_problems(spec, outcome)


def _bad_request_problems(spec: Spec, outcome: Outcome) -> list[str]:
    if outcome.status != 400:
        return [f"HTTP {outcome.status} (wanted 400): {outcome.text[:300]}"]
    try:
        error = json.loads(outcome.text)["error"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return [f"400 without an OpenAI-style error body: {outcome.text[:300]}"]
    message = error.get("message")
    if not isinstance(message, str) or spec.expect.lower() not in message.lower():
        return [f"400's message does not name {spec.expect!r}: {message!r}"]
    if error.get("type") != "invalid_request_error":
        return [f"400's error type is {error.get('type')!r}"]
    return []


def _finish_ok(finish_reason: object) -> bool:
    return finish_reason in ("stop", "length")


def _whole_problems(spec: Spec, outcome: Outcome) -> list[str]:
    try:
        answer = json.loads(outcome.text)
    except json.JSONDecodeError:
        return [f"not JSON: {outcome.text[:300]}"]
    choices = answer.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return [f"choices: {choices!r}"]
    finish_reason = choices[0].get("finish_reason")
    if not _finish_ok(finish_reason):
        return [f"finish_reason {finish_reason!r}"]
    tokens = answer.get("usage", {}).get("completion_tokens", -1)
    if not 0 <= tokens <= spec.max_tokens or (finish_reason == "length"
                                              and tokens != spec.max_tokens):
        return [f"finish_reason {finish_reason!r} with usage {answer.get('usage')!r}"]
    return []


def _stream_problems(spec: Spec, outcome: Outcome) -> list[str]:
    events = outcome.events
    if not events or events[-1] != "[DONE]" or events.count("[DONE]") != 1:
        return [f"the stream does not end with one [DONE]: {events[-3:]!r}"]
    finishes, ids = [], set()
    for raw in events[:-1]:
        try:
            chunk = json.loads(raw)
        except json.JSONDecodeError:
            return [f"an event is not JSON: {raw[:200]!r}"]
        if "error" in chunk:
            return [f"an error event: {raw[:300]}"]
        ids.add(chunk.get("id"))
        for choice in chunk.get("choices", []):
            if choice.get("index") != 0:
                return [f"a choice with index {choice.get('index')!r}"]
            if choice.get("finish_reason") is not None:
                finishes.append(choice["finish_reason"])
    found = []
    if len(finishes) != 1 or not _finish_ok(finishes[0]):
        found.append(f"finish reasons {finishes!r}")
    if len(ids) != 1:
        found.append(f"{len(ids)} response ids in one stream")
    return found
