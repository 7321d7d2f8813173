"""The LLM engine: one step is schedule -> run the model -> sample -> postprocess.

`LLMEngine` owns the model, the paged KV cache, the block manager and the scheduler. It is not
thread-safe: one thread calls every method (see async_engine.py).

Disaggregation: a prefill worker calls `prefill_only` (the request stops after its first token
and keeps its prompt KV blocks pinned; `prefilled_blocks` lists them until `release`). A decode
worker calls `admit_with_kv` (reserves blocks, sharing locally cached prefix blocks; the returned
reservation says which blocks still need data), writes the KV with `kv_pool.write_blocks`, then
`complete_kv` admits the request as running; its first StepOutput carries the first token too,
unless `emit_pending` reports it at once (a decode worker streams it before its first step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from pdserve.runtime.compression.compressor import KVCompressor
from pdserve.runtime.engine.block_manager import BlockManager
from pdserve.runtime.engine.config import EngineConfig, build_components
from pdserve.runtime.engine.detokenizer import IncrementalDetokenizer
from pdserve.runtime.engine.errors import RunnerBrokenError
from pdserve.runtime.engine.kv_cache import KVLayout
from pdserve.runtime.engine.kv_reservation import KVReservation
from pdserve.runtime.engine.model_runner import ModelRunner
from pdserve.runtime.engine.sampler import TokenLogprobs, sample, skip_sampled_token
from pdserve.runtime.engine.sampling_params import SamplingParams
from pdserve.runtime.engine.scheduler import Scheduler, SchedulerOutput
from pdserve.runtime.engine.sequence import Sequence
from pdserve.runtime.grammar.compiler import GrammarCompiler, GrammarState
from pdserve.runtime.grammar.masks import apply_grammars

log = logging.getLogger(__name__)

__all__ = ["EngineConfig", "EngineStats", "LLMEngine", "StepOutput"]


@dataclass
class StepOutput:
    request_id: str
    token_ids: list[int]  # new this step
    text: str  # new this step
    logprobs: list[TokenLogprobs] | None
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int


@dataclass
class EngineStats:
    num_waiting: int
    num_running: int
    kv_usage: float
    prefix_queries: int
    prefix_hits: int
    num_free_blocks: int
    num_blocks: int
    kv_tokens_pruned: int  # by KV compression, since start
    kv_bytes_saved: int


@dataclass
class _Request:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None
    pending: list[int] = field(default_factory=list)  # tokens to report with the next output
    grammar: GrammarState | None = None  # where a constrained request is in its grammar


class LLMEngine:
    def __init__(self, config: EngineConfig):
        if config.tensor_parallel_size > 1:
            from pdserve.runtime.parallel.replica import build_replica  # torch.distributed

            parts = build_replica(config)
        else:
            parts = build_components(config)
        self.config = config
        self.model_path = parts.model_path
        self.device = parts.device
        self.dtype = parts.dtype
        self.model_config = parts.model_config
        self.tokenizer = parts.tokenizer
        self.kv_cache = parts.kv_cache
        self.kv_pool = parts.kv_pool
        self.runner = parts.runner
        self.max_model_len = parts.max_model_len
        self.block_manager = BlockManager(
            parts.kv_cache.num_blocks, config.block_size, config.enable_prefix_caching
        )
        eos = set(self.model_config.eos_token_ids) | set(self.tokenizer.eos_token_ids)
        self.scheduler = Scheduler(
            self.block_manager,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            self.max_model_len,
            eos_token_ids=eos,
        )
        self._requests: dict[str, _Request] = {}
        # Compressed KV (fewer slots than tokens) is laid out by the eager runner only.
        self.reads_compressed_kv = isinstance(self.runner, ModelRunner)
        if config.kv_compression.enabled and not self.reads_compressed_kv:
            raise ValueError(f"KV compression is not supported on the {self.device.type} device"
                             " yet (its bucketed runner has no compressed layout)")
        layout = parts.kv_pool.layout  # every KV head: what a pruned token frees in the replica
        self.compressor = KVCompressor(parts.kv_cache, self.block_manager,
                                       layout.bytes_per_block // layout.block_size)
        self.grammars = GrammarCompiler(self.tokenizer, self.model_config.vocab_size, eos,
                                        config.grammar_cache_bytes)

    def close(self) -> None:
        """Release what the engine holds beyond memory (a tensor-parallel replica's ranks)."""
        self.runner.close()

    @property
    def kv_layout(self) -> KVLayout:
        """What the KV-transfer handshake compares between two engines."""
        return self.kv_pool.layout

    # ---- requests ---------------------------------------------------------------------------

    def _new_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, priority: int
    ) -> _Request:
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        params.validate()
        vocab = self.model_config.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(
                f"the prompt has {len(prompt_token_ids)} tokens but the maximum context length "
                f"is {self.max_model_len} tokens (including at least one generated token)"
            )
        seq = Sequence(request_id, list(prompt_token_ids), params=params, priority=priority)
        if params.allow_kv_compression:
            seq.kv_compression = self.config.kv_compression
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        detok = IncrementalDetokenizer(self.tokenizer, seq.prompt_token_ids, params.stop)
        grammar = self.grammars.start(params.grammar) if params.grammar is not None else None
        return _Request(seq, detok, generator, grammar=grammar)

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int = 0,
    ) -> None:
        """Queue a request; ValueError with a clear message when it cannot be served."""
        request = self._new_request(request_id, prompt_token_ids, params, priority)
        self.scheduler.add(request.seq)
        self._requests[request_id] = request

    def abort(self, request_id: str) -> bool:
        """Stop a request wherever it is and free its KV blocks; False if it is unknown."""
        request = self._requests.pop(request_id, None)
        seq = self.scheduler.abort(request_id)
        self.compressor.forget(request_id)
        return request is not None or seq is not None

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_waiting=self.scheduler.num_waiting,
            num_running=self.scheduler.num_running,
            kv_usage=bm.usage,
            prefix_queries=bm.prefix_queries,
            prefix_hits=bm.prefix_hits,
            num_free_blocks=bm.num_free_blocks,
            num_blocks=bm.num_blocks,
            kv_tokens_pruned=self.compressor.tokens_pruned,
            kv_bytes_saved=self.compressor.bytes_saved,
        )

    # ---- one step ---------------------------------------------------------------------------

    def step(self) -> list[StepOutput]:
        """Run one scheduling step; returns an output for every request that advanced or ended."""
        scheduled = self.scheduler.schedule()
        for seq in scheduled.preempted:  # recomputed from scratch: its scores start over
            self.compressor.forget(seq.request_id)
        try:
            sampled, logprobs = self._run(scheduled)
        except RunnerBrokenError:
            raise  # the engine cannot go on (its caller stops it)
        except Exception:  # a failed step fails its requests, never the engine
            log.exception("model step failed; finishing its %d requests with an error",
                          len(scheduled.scheduled))  # fmt: skip
            return self._fail(scheduled)
        finished = self.scheduler.postprocess(scheduled, sampled)
        self.compressor.after_step(item.seq for item in scheduled.scheduled)
        outputs: list[StepOutput] = []
        for item in scheduled.scheduled:
            rid = item.seq.request_id
            if rid in sampled and rid in self._requests:
                outputs.append(self._emit(self._requests[rid], sampled[rid], logprobs.get(rid)))
        reported = {o.request_id for o in outputs}
        for seq in finished:  # finished without a new token (e.g. no room for its context)
            if seq.request_id not in reported:
                outputs.append(self._finished_output(seq))
        return outputs

    def _run(
        self, scheduled: SchedulerOutput
    ) -> tuple[dict[str, int], dict[str, TokenLogprobs | None]]:
        if not scheduled.scheduled:
            return {}, {}
        logits, chunks = self.runner.execute(scheduled.scheduled)
        if isinstance(self.runner, ModelRunner):
            self.compressor.observe(self.runner.score_windows)
        if not chunks:
            return {}, {}
        requests = [self._requests[c.seq.request_id] for c in chunks]
        apply_grammars(logits, [r.grammar for r in requests])
        result = sample(logits, [r.seq.params for r in requests], [r.generator for r in requests])
        for request, token in zip(requests, result.token_ids, strict=True):
            if request.grammar is not None and not request.grammar.accept(token):
                raise RuntimeError(f"token {token} sampled for {request.seq.request_id} is not "
                                   "allowed by its grammar")  # a masking bug: fail loudly
        ids = [c.seq.request_id for c in chunks]
        return dict(zip(ids, result.token_ids, strict=True)), dict(
            zip(ids, result.logprobs, strict=True)
        )

    def _emit(self, request: _Request, token: int, logprob: TokenLogprobs | None) -> StepOutput:
        seq = request.seq
        tokens = [*request.pending, token]
        request.pending.clear()
        if request.grammar is not None and request.grammar.is_terminated() \
                and not seq.is_finished:  # its grammar ended it (with ignore_eos, say)
            self.scheduler.finish(seq.request_id, "stop")
        text = request.detokenizer.add_tokens(tokens, seq.is_finished)
        if request.detokenizer.stopped and not seq.is_finished:
            self.scheduler.finish(seq.request_id, "stop")
            text += request.detokenizer.add_tokens([], True)
        if seq.is_finished:
            self._requests.pop(seq.request_id, None)
        return StepOutput(
            request_id=seq.request_id,
            token_ids=tokens,
            text=text,
            logprobs=None if seq.params.logprobs is None or logprob is None else [logprob],
            finished=seq.is_finished,
            finish_reason=seq.finish_reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
        )

    def _finished_output(self, seq: Sequence) -> StepOutput:
        request = self._requests.pop(seq.request_id, None)
        text = request.detokenizer.add_tokens([], True) if request else ""
        return StepOutput(seq.request_id, [], text, None, True, seq.finish_reason,
                          seq.num_prompt_tokens, seq.num_cached_tokens)  # fmt: skip

    def _fail(self, scheduled: SchedulerOutput) -> list[StepOutput]:
        outputs = []
        for item in scheduled.scheduled:
            self.compressor.forget(item.seq.request_id)
            seq = self.scheduler.finish(item.seq.request_id, "error")
            if seq is not None:
                outputs.append(self._finished_output(seq))
        return outputs

    # ---- disaggregation ----------------------------------------------------------------------

    def prefill_only(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int = 0,
    ) -> None:
        """Queue a request that stops after its first token and keeps its prompt KV pinned."""
        request = self._new_request(request_id, prompt_token_ids, params, priority)
        request.seq.retain_kv_on_finish = True
        request.seq.params = _first_token_only(params)
        self.scheduler.add(request.seq)
        self._requests[request_id] = request

    def prefilled_blocks(self, request_id: str) -> list[int]:
        """Block ids holding the prompt KV of a finished prefill-only request, in order."""
        seq = self.scheduler.retained.get(request_id)
        if seq is None:
            raise KeyError(f"no prefilled KV is held for request {request_id!r}")
        return seq.block_table[: self.block_manager.num_blocks_for(self.prefilled_kv_tokens(
            request_id))]

    def prefilled_kv_tokens(self, request_id: str) -> int:
        """Prompt tokens whose KV a finished prefill-only request holds (fewer than its prompt
        when compressed)."""
        seq = self.scheduler.retained.get(request_id)
        if seq is None:
            raise KeyError(f"no prefilled KV is held for request {request_id!r}")
        return seq.num_prompt_tokens - seq.num_dropped_tokens

    def release(self, request_id: str) -> bool:
        """Unpin the KV blocks of a prefill-only request (after its transfer or on failure)."""
        return self.scheduler.release(request_id)

    def admit_with_kv(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        first_token: int,
        params: SamplingParams,
        priority: int = 0,
        num_kv_tokens: int | None = None,
    ) -> KVReservation | None:
        """Reserve blocks for a request whose prompt KV comes from elsewhere (None: no room now).

        `reservation.missing_block_ids` are the blocks to fill (the leading
        `num_cached_blocks` are already cached here). Then call `complete_kv`, or `abort` to free
        the reservation (the caller decides when a transfer has failed). A compressed
        prompt's KV holds `num_kv_tokens` slots (None: the whole prompt).
        """
        if num_kv_tokens is not None and not self.reads_compressed_kv:
            raise ValueError(f"compressed KV cannot be read on the {self.device.type} device")
        request = self._new_request(request_id, prompt_token_ids, params, priority)
        request.seq.snapkv_done = True  # its prompt was prefilled elsewhere
        reservation = self.block_manager.reserve(request.seq, num_kv_tokens)
        if reservation is None:
            return None
        if request.grammar is not None and not request.grammar.accept(first_token):
            raise ValueError(f"the first token {first_token} does not match the request's "
                             "grammar")
        request.pending.append(first_token)
        if request.generator is not None and params.temperature != 0.0:
            skip_sampled_token(request.generator, self.model_config.vocab_size, self.device)
        self._requests[request_id] = request
        return reservation

    def complete_kv(self, request_id: str) -> None:
        """The prompt KV is written: admit the request as running, decoding after first_token."""
        request = self._requests[request_id]
        seq = self.block_manager.complete_reservation(request_id)
        seq.output_token_ids = list(request.pending)
        self.scheduler.add(seq)

    def emit_pending(self, request_id: str) -> StepOutput:
        """The tokens a request holds unreported (a handed-over request's first token) as an
        output now rather than with its next step's; a stop string or grammar they complete
        finishes the request."""
        request = self._requests[request_id]
        seq = request.seq
        tokens = list(request.pending)
        request.pending.clear()
        text = request.detokenizer.add_tokens(tokens, False)
        grammar_done = request.grammar is not None and request.grammar.is_terminated()
        if request.detokenizer.stopped or grammar_done:
            self.scheduler.finish(request_id, "stop")
            text += request.detokenizer.add_tokens([], True)
            self._requests.pop(request_id, None)
        return StepOutput(request_id, tokens, text, None, seq.is_finished, seq.finish_reason,
                          seq.num_prompt_tokens, seq.num_cached_tokens)


def _first_token_only(params: SamplingParams) -> SamplingParams:
    return SamplingParams(**{**vars(params), "max_tokens": 1})
