"""A model that has learned something, for measuring what KV compression costs: key-value recall.

The task: a context of key-value pairs with distractor tokens between them, then a query of
`QUERY_KEYS` of its keys; the answer is each queried key and its value, in query order, then end
of text. The first answer token (the first key, copied from the query) comes from the prefill's
full attention; every value is decoded over the KV that compression kept. Each step is a copy
of what follows an earlier occurrence of a token (an induction head's job), which a 2-layer
model learns in minutes, and a query key's own attention already points at its pair: what
SnapKV's observation window relies on. Random weights attend uniformly and say nothing about
quality, so the project trains this model itself: deterministically (seeded, on the CPU, about
ten minutes), cached like the built-in models, in Hugging Face layout (config.json,
safetensors, a word-level tokenizer), so the runtime loads it like any checkpoint.

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

EOS, BOS, QUERY, ANSWER = 0, 1, 2, 3
NUM_FILLERS, NUM_KEYS, NUM_VALUES = 32, 64, 64
FIRST_FILLER = 4
FIRST_KEY = FIRST_FILLER + NUM_FILLERS
FIRST_VALUE = FIRST_KEY + NUM_KEYS
VOCAB_SIZE = FIRST_VALUE + NUM_VALUES
QUERY_KEYS = 4


@dataclass(frozen=True)
class Training:
    """Everything the trained weights depend on (its hash names the cached directory)."""

    seed: int = 0
    steps: int = 3500
    batch: int = 32
    lr: float = 3e-3
    min_pairs: int = 4
    max_pairs: int = 28
    max_fillers: int = 4  # distractors before each pair: 0..max_fillers
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    version: int = 3

    def key(self) -> str:
        import hashlib

        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"recall-{digest[:12]}"


@dataclass
class Sample:
    prompt: list[int]
    answer: list[int]  # each queried key and its value, in query order, then EOS

    @property
    def values(self) -> list[int]:
        return self.answer[1:-1:2]


def sample(rng: random.Random, num_pairs: int, max_fillers: int,
           num_queries: int = QUERY_KEYS) -> Sample:
    keys = rng.sample(range(FIRST_KEY, FIRST_KEY + NUM_KEYS), num_pairs)
    values = [rng.randrange(FIRST_VALUE, FIRST_VALUE + NUM_VALUES) for _ in keys]
    prompt = [BOS]
    for key, value in zip(keys, values, strict=True):
        prompt += [rng.randrange(FIRST_FILLER, FIRST_KEY) for _ in range(rng.randint(0,
                                                                                  max_fillers))]
        prompt += [key, value]
    asked = rng.sample(range(num_pairs), num_queries)
    prompt += [QUERY, *(keys[i] for i in asked), ANSWER]
    answer = [token for i in asked for token in (keys[i], values[i])]
    return Sample(prompt, [*answer, EOS])


def token_names() -> list[str]:
    names = ["<eos>", "<bos>", "Q", "A"]
    names += [f"f{i}" for i in range(NUM_FILLERS)]
    names += [f"k{i}" for i in range(NUM_KEYS)]
    names += [f"v{i}" for i in range(NUM_VALUES)]
    return names


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
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "bos_token_id": BOS, "eos_token_id": EOS,
        "hidden_act": "silu", "torch_dtype": "float32",
    }


def _batch(rng: random.Random, t: Training) -> tuple[torch.Tensor, torch.Tensor]:
    samples = []
    for _ in range(t.batch):
        # Training asks for more pairs than the evaluation's four: more answer tokens to learn
        # from in each sample, the same skill.
        pairs = rng.randint(t.min_pairs, t.max_pairs)
        samples.append(sample(rng, pairs, t.max_fillers, rng.randint(QUERY_KEYS, pairs)))
    width = max(len(s.prompt) + len(s.answer) for s in samples)
    ids = torch.full((t.batch, width), EOS, dtype=torch.long)
    labels = torch.full((t.batch, width), -100, dtype=torch.long)
    for row, s in enumerate(samples):
        seq = s.prompt + s.answer
        ids[row, :len(seq)] = torch.tensor(seq)
        # Loss on the answer only: predicting it from the prompt is the whole task.
        labels[row, len(s.prompt):len(seq)] = torch.tensor(s.answer)
    return ids, labels


def train(target: Path, t: Training) -> Path:
    """Train from the seed and write the model directory (atomically: a temp dir renamed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(t.seed)
    rng = random.Random(t.seed)
    model = LlamaForCausalLM(LlamaConfig(**_hf_config(t)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, t.lr, total_steps=t.steps,
                                                   pct_start=0.05)
    started = time.perf_counter()
    for step in range(t.steps):
        ids, labels = _batch(rng, t)
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
        {"bos_token": "<bos>", "eos_token": "<eos>", "model_max_length": 512}))
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
