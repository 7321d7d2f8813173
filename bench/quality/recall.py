"""A model that has learned something, for measuring what KV compression costs: passage recall.

The task: a context passage of distinct random tokens, then `QUERY` and one token of the
passage (the cue); the answer is the `VALUE_TOKENS` tokens that followed the cue in the
passage. Every other passage token is a distractor. The first answer token comes from the
prefill's full attention; the others are decoded over the KV that compression kept. Each
answer token copies what followed an earlier occurrence of the current token (an induction
head's job), and the cue's own attention already points at the answer's first position: what
SnapKV's observation window relies on. Random weights attend uniformly and say nothing about
quality, so the project trains this model itself: deterministically (seeded, on the CPU, about
ten minutes on 2 cores), cached like the built-in models, in Hugging Face layout (config.json,
safetensors, a word-level tokenizer), so the runtime loads it like any checkpoint.

What made it learn (measured, seed 0): half the training rows are the task (a cue, then the
passage from there on) and half repeat the whole passage after `QUERY`. Trained on the task
alone, the model sat at a loss of ~6 (recall 1-7%) for 8,000 steps; on whole repeats alone its
loss fell below 0.4 within 1,000 steps, but by a copy that did not carry over to cues (7%
recall); on the mix it recalled every answer at 32 and 64 tokens from ~1,500 steps.

    .venv/bin/python -m bench.quality.recall            # train (or find) it; print its path
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from pdserve.runtime.checkpoints.builtin import model_cache_dir

log = logging.getLogger(__name__)

EOS, BOS, QUERY = 0, 1, 2
FIRST_TOKEN = 3
NUM_TOKENS = 512  # passage tokens
VOCAB_SIZE = FIRST_TOKEN + NUM_TOKENS
VALUE_TOKENS = 4  # the answer's length
MAX_POSITIONS = 1024  # a whole repeat of the longest passage fits


@dataclass(frozen=True)
class Training:
    """Everything the trained weights depend on (its hash names the cached directory)."""

    seed: int = 0
    steps: int = 3500
    batch_tokens: int = 2048  # passage tokens per step: rows = batch_tokens // passage length
    lr: float = 1e-3
    weight_decay: float = 0.0
    min_passage: int = 16
    max_passage: int = 256
    # A curriculum: passages of at most `first_max_passage` tokens for the first steps (where
    # recall is learnt), then the longest allowed grows to `max_passage` over `ramp_steps`.
    first_max_passage: int = 64
    first_steps: int = 1000
    ramp_steps: int = 1000
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 384
    version: int = 14

    def key(self) -> str:
        import hashlib

        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"recall-{digest[:12]}"


@dataclass
class Sample:
    prompt: list[int]
    answer: list[int]  # what followed the cue in the passage

    @property
    def values(self) -> list[int]:
        return self.answer[:VALUE_TOKENS]


@dataclass(frozen=True)
class Vocabulary:
    """The token ids recall prompts are made of: the trained model's, or a range of another
    checkpoint's (the same harness pointed at a real model)."""

    passage: range
    query: int
    bos: int | None


RECALL_VOCABULARY = Vocabulary(range(FIRST_TOKEN, VOCAB_SIZE), QUERY, BOS)


def sample(rng: random.Random, passage_tokens: int, answer_tokens: int = VALUE_TOKENS,
           vocabulary: Vocabulary = RECALL_VOCABULARY) -> Sample:
    """A passage of distinct tokens, a cue from it, and what followed the cue (training asks
    for long answers: more tokens to learn from; evaluation for `VALUE_TOKENS`)."""
    passage = rng.sample(vocabulary.passage, passage_tokens)
    cue = rng.randrange(passage_tokens - VALUE_TOKENS)
    answer = passage[cue + 1:cue + 1 + answer_tokens]
    start = [] if vocabulary.bos is None else [vocabulary.bos]
    return Sample([*start, *passage, vocabulary.query, passage[cue]], answer)


def token_names() -> list[str]:
    return ["<eos>", "<bos>", "Q", *(f"t{i}" for i in range(NUM_TOKENS))]


def _tokenizer_json() -> str:
    vocab = {name: i for i, name in enumerate(token_names())}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    data = json.loads(tokenizer.to_str())
    data["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": False}  # joins with " "
    return json.dumps(data)


def _hf_config(t: Training) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": VOCAB_SIZE, "hidden_size": t.hidden, "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads, "num_key_value_heads": t.kv_heads,
        "head_dim": t.hidden // t.heads, "intermediate_size": t.intermediate,
        "max_position_embeddings": MAX_POSITIONS, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "bos_token_id": BOS, "eos_token_id": EOS,
        "hidden_act": "silu", "torch_dtype": "float32",
    }


def longest_passage(t: Training, step: int) -> int:
    grown = max(0.0, min(1.0, (step - t.first_steps) / t.ramp_steps))
    return round(t.first_max_passage + grown * (t.max_passage - t.first_max_passage))


def _batch(rng: random.Random, t: Training, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    # One passage length per step, rows to match: every length gets the same tokens.
    length = rng.randint(t.min_passage, longest_passage(t, step))
    rows = max(1, t.batch_tokens // length)
    samples = []
    for _ in range(rows):
        if rng.random() < 0.5:
            samples.append(sample(rng, length, length))  # the answer runs to the passage's end
        else:  # the whole passage again: see the module's docstring
            passage = rng.sample(RECALL_VOCABULARY.passage, length)
            samples.append(Sample([BOS, *passage, QUERY], passage))
    width = max(len(s.prompt) + len(s.answer) for s in samples)
    ids = torch.full((rows, width), EOS, dtype=torch.long)
    labels = torch.full((rows, width), -100, dtype=torch.long)
    for row, s in enumerate(samples):
        seq = s.prompt + s.answer
        ids[row, :len(seq)] = torch.tensor(seq)
        # Loss on the answer only: recalling it from the passage is the whole task.
        labels[row, len(s.prompt):len(seq)] = torch.tensor(s.answer)
    return ids, labels


def train(target: Path, t: Training) -> Path:
    """Train from the seed and write the model directory (atomically: a temp dir renamed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(t.seed)
    rng = random.Random(t.seed)
    model = LlamaForCausalLM(LlamaConfig(**_hf_config(t)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    # Held, then decayed over the last fifth: a held rate lets induction heads form.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        1.0, 5 * (t.steps - step) / t.steps))
    started = time.perf_counter()
    for step in range(t.steps):
        ids, labels = _batch(rng, t, step)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == t.steps - 1:
            log.info("step %d loss %.3f (%.0fs)", step, loss.item(),
                     time.perf_counter() - started)
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(partial, safe_serialization=True)
    (partial / "tokenizer.json").write_text(_tokenizer_json())
    (partial / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": "<eos>", "model_max_length": MAX_POSITIONS}))
    (partial / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": BOS, "eos_token_id": EOS}))
    (partial / "training.json").write_text(json.dumps(
        {**asdict(t), "seconds": round(time.perf_counter() - started, 1),
         "final_loss": round(loss.item(), 4)}, indent=2))
    partial.rename(target)
    return target


def recall_model(t: Training = Training()) -> Path:
    """The trained model's directory: from the cache, else trained now (minutes)."""
    target = model_cache_dir() / t.key()
    if not (target / "training.json").exists():
        train(target, t)
    return target


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(recall_model())
    return 0


if __name__ == "__main__":
    sys.exit(main())
