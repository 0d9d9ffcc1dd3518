"""The portable engine: requests in, new tokens out, one scheduling step at a time.

`add_request` and `abort` may be called from any thread: they go through an inbox that `step()`
drains. `step()` itself is called from one thread (Triton's model loop, or `generate`).

Pipelined decoding: when every running sequence decodes greedily through a CUDA graph, a step launches
the next decode before it reads the tokens of the one in flight, taking the next input tokens from the
GPU. The host's bookkeeping (appending tokens, stop checks, scheduling, filling inputs) then overlaps
the GPU's work instead of leaving it idle. A sequence that stops on the token being read has had one
more step computed for it, which is dropped; its blocks are freed behind that step on the same stream.
Anything else (prefills, sampling, penalties, new requests that can be admitted) runs step by step.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.portable.block_manager import BlockManager
from engines.portable.config import EngineConfig, ModelConfig
from engines.portable.cuda_graphs import Launch
from engines.portable.grammar import GrammarCache, fill_mask
from engines.portable.loader import load_weights, torch_dtype
from engines.portable.model import CausalLM
from engines.portable.model_runner import ModelRunner, kv_cache_blocks
from engines.portable.sampler import argmax_is_next, sample
from engines.portable.sampling import SamplingParams
from engines.portable.scheduler import Scheduler
from engines.portable.sequence import Sequence, Status


@dataclass
class _InFlight:
    """A launched greedy decode step whose tokens are not read yet."""

    seqs: list[Sequence]
    launch: Launch


@dataclass
class StepOutput:
    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[float] | None
    finished: bool
    finish_reason: str | None = None  # "stop", "length" or "abort"


class LLMEngine:
    def __init__(self, model_config: ModelConfig, engine_config: EngineConfig, weights: dict):
        self.model_config, self.config = model_config, engine_config
        self.max_model_len = engine_config.max_model_len or model_config.max_position_embeddings
        dtype = torch_dtype(engine_config.dtype)
        model = CausalLM(model_config, weights, self.max_model_len, engine_config.device, dtype)
        num_blocks = kv_cache_blocks(model_config, engine_config, dtype)
        self.blocks = BlockManager(num_blocks, engine_config.block_size, engine_config.enable_prefix_caching)
        self.scheduler = Scheduler(engine_config, self.blocks)
        self.runner = ModelRunner(model, engine_config, num_blocks, dtype)
        self.sequences: dict[str, Sequence] = {}
        self._inbox: list[tuple[str, object]] = []
        self._lock = threading.Lock()
        self._in_flight: _InFlight | None = None
        self.pipelined = engine_config.pipeline_decode and self.runner.graphs is not None
        self.tokenizer_dir: Path | None = None  # where guided decoding finds the tokenizer
        self._grammars: GrammarCache | None = None
        self._grammar_lock = threading.Lock()
        self._matchers: dict[str, object] = {}  # request id -> its grammar state, until the request is queued

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, config: EngineConfig | None = None) -> "LLMEngine":
        config = config or EngineConfig()
        model_config = ModelConfig.from_dir(checkpoint_dir)
        weights = load_weights(Path(checkpoint_dir), model_config, config.device, torch_dtype(config.dtype))
        engine = cls(model_config, config, weights)
        engine.tokenizer_dir = Path(checkpoint_dir)
        return engine

    @property
    def num_free_blocks(self) -> int:
        return self.blocks.num_free_blocks

    @property
    def num_total_blocks(self) -> int:
        return self.blocks.num_blocks

    # ---- requests in (any thread)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._check(prompt_token_ids, params)
        # Compiled here, on the caller's thread, so that the step loop never waits on a compile.
        matcher = None if params.guide is None else self.grammars(params.end_id).matcher(params.guide)
        with self._lock:
            if request_id in self.sequences or any(rid == request_id and payload is not None
                                                   for rid, payload in self._inbox):
                raise ValueError(f"request id {request_id!r} is already in use")
            if matcher is not None:
                self._matchers[request_id] = matcher
            self._inbox.append((request_id, ([int(t) for t in prompt_token_ids], params)))

    def grammars(self, end_id: int | None = None) -> GrammarCache:
        """The compiled-grammar cache, made on the first guided request (it loads the tokenizer)."""
        with self._grammar_lock:
            if self._grammars is None:
                if self.tokenizer_dir is None:
                    raise ValueError("guided decoding needs the model's tokenizer; this engine was built without one")
                self._grammars = GrammarCache(self.tokenizer_dir, self.model_config.vocab_size, end_id)
            return self._grammars

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._inbox.append((request_id, None))

    def _check(self, prompt: list[int], params: SamplingParams) -> None:
        params.validate()
        if not prompt:
            raise ValueError("the prompt is empty")
        vocab = self.model_config.vocab_size
        if not all(isinstance(t, int) or hasattr(t, "__index__") for t in prompt):
            raise ValueError("prompt_token_ids must be a list of integer token ids")
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token ids out of the vocabulary (size {vocab}): {bad[:5]}")
        if params.end_id is not None and params.end_id >= vocab:
            raise ValueError(f"end_id {params.end_id} is out of the vocabulary (size {vocab})")
        bad_stops = [stop for stop in params.stop_token_sequences if not all(0 <= t < vocab for t in stop)]
        if bad_stops:
            raise ValueError(f"stop_token_sequences hold token ids out of the vocabulary (size {vocab}): "
                             f"{bad_stops[:3]}")
        total = len(prompt) + params.max_new_tokens
        if total > self.max_model_len:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({params.max_new_tokens}) = {total} "
                             f"exceeds the maximum context length of {self.max_model_len}")
        capacity = self.blocks.num_blocks * self.config.block_size
        if total > capacity:
            raise ValueError(f"{total} tokens exceed the whole KV cache ({capacity} tokens); raise "
                             "kv_cache_memory_bytes or shorten the request")

    def _drain_inbox(self) -> list[StepOutput]:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        aborted = []
        for request_id, payload in inbox:
            if payload is None:
                seq = self.sequences.pop(request_id, None)
                if seq is not None:
                    self.scheduler.remove(seq)
                    seq.status, seq.finish_reason = Status.FINISHED, "abort"
                    aborted.append(StepOutput(request_id, [], None, True, "abort"))
                continue
            prompt, params = payload
            seq = Sequence(request_id, prompt, len(prompt), params)
            with self._lock:
                seq.grammar = self._matchers.pop(request_id, None)
            if params.seed is not None and not params.greedy:
                seed = int(params.seed) & 0xFFFF_FFFF_FFFF_FFFF  # the contract's seed is a uint64
                seq.generator = torch.Generator(device=self.config.device).manual_seed(seed)
            self.sequences[request_id] = seq
            self.scheduler.add(seq)
        return aborted

    # ---- the loop (one thread)

    def has_unfinished(self) -> bool:
        with self._lock:
            pending = bool(self._inbox)
        return pending or self._in_flight is not None or self.scheduler.has_unfinished()

    def step(self) -> list[StepOutput]:
        outputs = self._drain_inbox()
        if self._in_flight is not None:
            return outputs + self._read_in_flight()
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return outputs
        completing = [row for row, (seq, count) in enumerate(scheduled)
                      if seq.num_computed_tokens + count == seq.num_tokens]
        if self.pipelined and self.runner.graph_decode(scheduled, completing):
            seqs = [seq for seq, _ in scheduled]
            if all(argmax_is_next(seq) for seq in seqs):
                self._launch(seqs, None)
                return outputs
        # The forward runs even when nobody samples: a step of prefill chunks alone fills the KV cache.
        logits = self.runner.run(scheduled, completing)
        for seq, count in scheduled:
            seq.num_computed_tokens += count
            self.blocks.register_full_blocks(seq)
        if not completing:
            return outputs
        seqs = [scheduled[row][0] for row in completing]
        # Host work while the GPU runs the forward launched above: sampling is what waits for it.
        grammar_mask = fill_mask([seq.grammar for seq in seqs], self.model_config.vocab_size)
        tokens, logprobs = sample(logits, seqs, grammar_mask)
        for seq, token, logprob in zip(seqs, tokens, logprobs, strict=True):
            outputs.append(self._append(seq, token, logprob))
        return outputs

    # ---- pipelined greedy decoding (CUDA graphs)

    def _launch(self, seqs: list[Sequence], source_rows: list[int] | None) -> None:
        launch = self.runner.launch_decode(seqs, source_rows)
        for seq in seqs:
            seq.num_computed_tokens += 1
        self._in_flight = _InFlight(seqs, launch)

    def _launch_ahead(self, in_flight: _InFlight) -> None:
        """Launch the decode after the one in flight, if every running sequence is in it and will
        still run after its token (not at its length limit), and blocks are free without preempting."""
        scheduler = self.scheduler
        running = [seq for seq in in_flight.seqs if seq.status is Status.RUNNING]
        max_running = min(self.config.max_num_seqs, self.config.max_num_batched_tokens)
        if len(running) != len(scheduler.running) or (scheduler.waiting and len(scheduler.running) < max_running):
            return  # a prefill is under way, or a waiting request can be admitted: go step by step
        rows = {id(seq): row for row, seq in enumerate(in_flight.seqs)}
        following = [seq for seq in running if seq.num_output_tokens + 1 < seq.params.max_new_tokens
                     and seq.num_tokens + 1 < self.max_model_len]
        if not following or not all(argmax_is_next(seq, 1) for seq in following):
            return
        if sum(self.blocks.blocks_needed(seq, 1) for seq in following) > self.blocks.num_free_blocks:
            return
        for seq in following:
            self.blocks.allocate(seq, 1)
        if not self.runner.can_launch(following):
            return
        self._launch(following, [rows[id(seq)] for seq in following])

    def _read_in_flight(self) -> list[StepOutput]:
        in_flight, self._in_flight = self._in_flight, None
        self._launch_ahead(in_flight)
        tokens, logprobs = self.runner.greedy(in_flight.launch)
        outputs = []
        for seq, token, logprob in zip(in_flight.seqs, tokens, logprobs, strict=True):
            if seq.status is Status.FINISHED:
                continue  # aborted while its step ran, or stopped one step before this one
            outputs.append(self._append(seq, token, logprob))
            if seq.status is not Status.FINISHED:
                self.blocks.register_full_blocks(seq)
        return outputs

    def _append(self, seq: Sequence, token: int, logprob: float) -> StepOutput:
        params = seq.params
        new_ids, new_logprobs = [token], [logprob]
        if seq.grammar is not None and (seq.grammar.is_stop(token) or not seq.grammar.accept(token)):
            # The grammar is complete (only stop tokens were allowed), or it cannot go on.
            new_ids, new_logprobs, reason = [], [], "stop"
        elif token == params.effective_end_id:
            new_ids, new_logprobs, reason = [], [], "stop"
        else:
            seq.token_ids.append(token)
            seq.logprobs.append(logprob)
            reason = self._finish_reason(seq)
        if reason is not None:
            self.sequences.pop(seq.request_id, None)
            self.scheduler.remove(seq)
            seq.status, seq.finish_reason = Status.FINISHED, reason
        return StepOutput(seq.request_id, new_ids, new_logprobs if params.return_logprobs else None,
                          reason is not None, reason)

    def _finish_reason(self, seq: Sequence) -> str | None:
        output = seq.output_token_ids
        for stop in seq.params.stop_token_sequences:
            if stop and len(output) >= len(stop) and output[-len(stop):] == stop:
                return "stop"
        if seq.num_output_tokens >= seq.params.max_new_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    # ---- offline use

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} sampling parameters")
        for prompt, p in zip(prompts, params_list, strict=True):
            self._check(prompt, p)  # all or nothing: no request is left behind by a later bad one
        ids = [f"offline-{index}-{id(prompts)}" for index in range(len(prompts))]
        results: dict[str, list[int]] = {rid: [] for rid in ids}
        for rid, prompt, p in zip(ids, prompts, params_list, strict=True):
            self.add_request(rid, prompt, p)
        while self.has_unfinished():
            for output in self.step():
                if output.request_id in results:
                    results[output.request_id].extend(output.new_token_ids)
        return [results[rid] for rid in ids]
