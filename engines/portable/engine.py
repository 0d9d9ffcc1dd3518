"""The portable engine: requests in, new tokens out, one scheduling step at a time.

`add_request` and `abort` may be called from any thread: they go through an inbox that `step()`
drains. `step()` itself is called from one thread (Triton's model loop, or `generate`).

Pipelined decoding: when every running sequence decodes through a CUDA graph, a step launches the next
decode before it reads the tokens of the one in flight, taking the next input tokens from the GPU. The
host's bookkeeping (appending tokens, stop checks, scheduling, filling inputs) then overlaps the GPU's
work instead of leaving it idle. A sequence that stops on the token being read has had one more step
computed for it, which is dropped; its blocks are freed behind that step on the same stream. Anything
else (prefills, beams, logits rows handed back, new requests that can be admitted) runs step by step.

Greedy rows take the argmax the graph computes. Other rows (sampled, penalised, biased, under min_length
or a grammar) need the tokens before the step: a launch holding them is finished once the tokens being
read are appended and their grammars advanced; the host then fills the grammar rows' bitmask while the
forward runs, and queues the sampler on the device (`choose`, the code `sample` runs) behind the forward,
before the launch's choices are copied back and fed to the next launch.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.portable.block_manager import BlockManager
from engines.portable.config import EngineConfig, ModelConfig
from engines.portable.cpu_weights import wants_int8
from engines.portable.cuda_graphs import Launch
from engines.portable.grammar_steps import GrammarSteps
from engines.portable.loader import load_weights, torch_dtype
from engines.portable.lora import LoraRegistry
from engines.portable.model import CausalLM
from engines.portable.kv_budget import kv_cache_blocks, served_context_length
from engines.portable.model_runner import ModelRunner
from engines.portable.beam_steps import BeamSteps
from engines.portable.outputs import RequestOutput, StepOutput
from engines.portable.request_group import RequestGroup, make_generator
from engines.portable.sampler import argmax_is_next, chosen_on_device, complete_choice, prepare_choice, sample
from engines.portable.sampling import SamplingParams
from engines.portable.scheduler import Scheduler
from engines.portable.sequence import Sequence, Status
from engines.portable.step_timeline import NO_TIMELINE, StepTimeline


@dataclass
class _InFlight:
    """A launched greedy decode step whose tokens are not read yet."""

    seqs: list[Sequence]
    launch: Launch


class LLMEngine(BeamSteps, GrammarSteps):
    def __init__(self, model_config: ModelConfig, engine_config: EngineConfig, weights: dict):
        self.model_config, self.config = model_config, engine_config
        max_model_len = engine_config.max_model_len or model_config.max_position_embeddings
        dtype = torch_dtype(engine_config.dtype)
        model = CausalLM(model_config, weights, max_model_len, engine_config.device, dtype)
        num_blocks = kv_cache_blocks(model_config, engine_config, dtype, max_model_len)
        # what one sequence can hold: the model's context, or less when the KV pool is smaller
        self.max_model_len = served_context_length(max_model_len, num_blocks, engine_config.block_size)
        self.blocks = BlockManager(num_blocks, engine_config.block_size, engine_config.enable_prefix_caching)
        self.scheduler = Scheduler(engine_config, self.blocks)
        self.runner = ModelRunner(model, engine_config, num_blocks, dtype)
        self.groups: dict[str, RequestGroup] = {}
        self._inbox: list[tuple[str, object]] = []
        self._lock = threading.Lock()
        self._in_flight: _InFlight | None = None
        self.pipelined = engine_config.pipeline_decode and self.runner.graphs is not None
        self.tokenizer_dir: Path | None = None  # where guided decoding finds the tokenizer
        self._grammars = None  # GrammarSteps.grammars makes it on the first guided request
        self._grammar_lock = threading.Lock()
        self._matchers: dict[str, object] = {}  # request id -> its grammar state, until the request is queued
        self.timeline = NO_TIMELINE  # `record_timeline` for benchmarks
        self.loras: LoraRegistry | None = None
        if engine_config.max_loras:
            self.loras = LoraRegistry(model_config, engine_config.max_loras, engine_config.max_lora_rank,
                                      torch.device(engine_config.device), dtype, engine_config.lora_kernel)
            model.lora = self.loras.slots

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, config: EngineConfig | None = None) -> "LLMEngine":
        config = config or EngineConfig()
        model_config = ModelConfig.from_dir(checkpoint_dir)
        dtype = torch_dtype(config.dtype)
        int8_rows = config.cpu_int8_max_rows if wants_int8(config.cpu_weights, config.device, dtype) else 0
        weights = load_weights(Path(checkpoint_dir), model_config, config.device, dtype, int8_rows)
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

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    lora: str | None = None) -> None:
        """Queue a request; `lora` names a loaded adapter (add_lora) to run it with, None for the base."""
        self._check(prompt_token_ids, params)
        adapter = self._adapter(lora)
        # Compiled here, on the caller's thread, so that the step loop never waits on a compile.
        matcher = None if params.guide is None else self.grammars(params.end_id).matcher(params.guide)
        with self._lock:
            if request_id in self.groups or any(rid == request_id and payload is not None
                                                   for rid, payload in self._inbox):
                raise ValueError(f"request id {request_id!r} is already in use")
            if matcher is not None:
                self._matchers[request_id] = matcher
            self._inbox.append((request_id, ([int(t) for t in prompt_token_ids], params, adapter)))

    # ---- LoRA adapters (any thread)

    def add_lora(self, name: str, path: str | Path) -> None:
        """Load a PEFT adapter into host memory under `name` (replacing one of that name)."""
        if self.loras is None:
            raise ValueError("this engine serves no LoRA adapters: set max_loras above 0")
        self.loras.add(name, path)

    def add_lora_weights(self, name: str, weights) -> None:
        """Register an adapter already read (engines.lora_format.AdapterWeights, checked against this model)."""
        if self.loras is None:
            raise ValueError("this engine serves no LoRA adapters: set max_loras above 0")
        self.loras.add_weights(name, weights)

    def remove_lora(self, name: str) -> None:
        if self.loras is None:
            raise ValueError("this engine serves no LoRA adapters")
        self.loras.remove(name)

    def _adapter(self, name: str | None):
        if name is None:
            return None
        if self.loras is None:
            raise ValueError(f"LoRA adapter {name!r} asked for, but this engine serves no adapters (max_loras=0)")
        return self.loras.get(name)

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
        bad_bias = [t for t in params.logit_bias if not 0 <= t < vocab]
        if bad_bias:
            raise ValueError(f"logit_bias token ids out of the vocabulary (size {vocab}): {bad_bias[:5]}")
        if params.beam_search and params.return_generation_logits:
            raise ValueError("generation logits are not returned with beam search")
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
                group = self.groups.pop(request_id, None)
                if group is not None:
                    for seq in group.live:
                        self.scheduler.remove(seq)
                        seq.status, seq.finish_reason = Status.FINISHED, "abort"
                    aborted.append(StepOutput(request_id, [], None, True, "abort"))
                continue
            prompt, params, adapter = payload
            group = RequestGroup.start(request_id, prompt, params, self.config.device)
            group.live[0].lora = adapter
            with self._lock:
                group.live[0].grammar = self._matchers.pop(request_id, None)
            self.groups[request_id] = group
            self.scheduler.add(group.live[0])
        return aborted

    def record_timeline(self) -> StepTimeline:
        """Start timing the pipelined decode's host and device phases (engines.portable.step_timeline)."""
        self.timeline = StepTimeline(torch.device(self.config.device).type == "cuda")
        if getattr(self.runner, "graphs", None) is not None:
            self.runner.graphs.timeline = self.timeline
        return self.timeline

    # ---- the loop (one thread)

    def has_launch_in_flight(self) -> bool:
        """Whether the last step left a pipelined decode running on the GPU (its tokens read by the next)."""
        return self._in_flight is not None

    def has_unfinished(self) -> bool:
        with self._lock:
            pending = bool(self._inbox)
        return pending or self._in_flight is not None or self.scheduler.has_unfinished()

    def step(self) -> list[StepOutput]:
        self.timeline.mark("step")
        outputs = self._drain_inbox()
        if self._in_flight is not None:
            return outputs + self._read_in_flight()
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return outputs
        if self.loras is not None:
            self._place_adapters([seq for seq, _ in scheduled])
        completing = [row for row, (seq, count) in enumerate(scheduled)
                      if seq.num_computed_tokens + count == seq.num_tokens]
        if self.pipelined and self.runner.graph_decode(scheduled, completing):
            seqs = [seq for seq, _ in scheduled]
            if all(chosen_on_device(seq) for seq in seqs):
                self._launch(seqs, None, pending=0)
                if self._in_flight.launch.event is None:  # every token before this step is appended
                    self._finish(self._in_flight)
                return outputs
        # Small steps run on fewer threads, sampling included (engines/portable/cpu_threads.py).
        with self.runner.step_threads(scheduled):
            # The forward runs even when nobody samples: a step of prefill chunks alone fills the KV cache.
            context_rows = [row for row, (seq, _) in enumerate(scheduled) if self._wants_context(seq)]
            logits, context = self.runner.run_with_context(scheduled, completing, context_rows)
            for row, rows in context.items():
                seq, count = scheduled[row]
                self.groups[seq.request_id].keep_context(seq.num_computed_tokens, count, rows, seq.num_prompt_tokens)
            for seq, count in scheduled:
                seq.num_computed_tokens += count
                self.blocks.register_full_blocks(seq)
            if not completing:
                return outputs
            seqs = [scheduled[row][0] for row in completing]
            return outputs + self._sample_step(logits, seqs)

    def _wants_context(self, seq: Sequence) -> bool:
        group = self.groups[seq.request_id]
        return seq.params.return_context_logits and group.num_context_logits < seq.num_prompt_tokens

    def _sample_step(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[StepOutput]:
        """Fork the requests whose prompts just finished into their choices, then sample every plain
        sequence and advance every beam search whose beams all have their logits."""
        rows = list(range(len(seqs)))
        for row, seq in enumerate(list(seqs)):
            group = self.groups[seq.request_id]
            if group.wants_fork:
                children = self._fork_choices(group, seq)
                seqs.extend(children)
                rows.extend([row] * len(children))
        if len(rows) != logits.shape[0]:
            logits = logits[torch.tensor(rows, device=logits.device)]
        plain = [row for row, seq in enumerate(seqs) if not seq.params.beam_search]
        outputs = []
        if plain:
            plain_logits = logits if len(plain) == len(seqs) else logits[torch.tensor(plain, device=logits.device)]
            plain_seqs = [seqs[row] for row in plain]
            raw_rows = self._raw_rows(plain_logits, plain_seqs)
            # Host work while the GPU runs the forward launched above: sampling is what waits for it.
            grammar_mask = self._fill_mask([seq.grammar for seq in plain_seqs])
            tokens, logprobs = sample(plain_logits, plain_seqs, grammar_mask)
            going = self._advance_grammars(plain_seqs, tokens)
            for seq, token, logprob, raw, on in zip(plain_seqs, tokens, logprobs, raw_rows, going, strict=True):
                if raw is not None:
                    seq.generation_logits.append(raw)
                outputs += self._append(seq, token, logprob, on)
        beams = [row for row, seq in enumerate(seqs) if seq.params.beam_search]
        if beams:
            outputs += self._beam_rows(logits[torch.tensor(beams, device=logits.device)], [seqs[r] for r in beams])
        return outputs

    @staticmethod
    def _raw_rows(logits: torch.Tensor, seqs: list[Sequence]) -> list[torch.Tensor | None]:
        """Raw logits rows (CPU) of the sequences that hand them back, taken before sampling masks them."""
        if not any(seq.params.return_generation_logits for seq in seqs):
            return [None] * len(seqs)
        return [logits[row].float().cpu() if seq.params.return_generation_logits else None
                for row, seq in enumerate(seqs)]

    def _fork_choices(self, group: RequestGroup, parent: Sequence) -> list[Sequence]:
        """The request's other choices, each continuing from the computed prompt of `parent`."""
        group.forked = True
        children = [self._fork(parent, index) for index in range(1, group.params.num_sequences)]
        group.live.extend(children)
        for child in children:
            child.generator = make_generator(group.params, child.index, self.config.device)
            if parent.grammar is not None:  # nothing is generated yet: each choice starts the grammar afresh
                child.grammar = self.grammars(group.params.end_id).matcher(group.params.guide)
        return children

    def _fork(self, parent: Sequence, index: int) -> Sequence:
        """A running copy of `parent` sharing its KV blocks; without a free block for the copy of the
        partial last one, it waits to be recomputed (as after a preemption)."""
        child = parent.fork(index)
        if self.blocks.can_fork(parent, 1):
            copy = self.blocks.fork(parent, child)
            self.runner.copy_blocks([copy] if copy else [])
            child.status = Status.RUNNING
            self.scheduler.running.append(child)
        else:
            child.status = Status.WAITING
            self.scheduler.waiting.appendleft(child)
        return child

    def _place_adapters(self, seqs: list[Sequence]) -> None:
        """Give each sequence of the step its adapter's device slot, loading adapters as needed (the
        scheduler admits no more distinct adapters than there are slots)."""
        slots = self.loras.slots
        in_use: set[int] = set()
        for seq in seqs:
            if seq.lora is None:
                seq.lora_slot = -1
                continue
            seq.lora_slot = slots.acquire(seq.lora, in_use)
            in_use.add(seq.lora_slot)

    # ---- pipelined greedy decoding (CUDA graphs)

    def _launch(self, seqs: list[Sequence], source_rows: list[int] | None, pending: int) -> None:
        """Launch a decode of `seqs` (`pending` tokens of each not appended yet); unless every row takes
        the plain argmax, the launch is left to `_finish`."""
        greedy = all(argmax_is_next(seq, pending) for seq in seqs)
        launch = self.runner.launch_decode(seqs, source_rows, finish=greedy)
        for seq in seqs:
            seq.num_computed_tokens += 1
        self._in_flight = _InFlight(seqs, launch)

    def _finish(self, in_flight: _InFlight, fill: Future | None = None) -> None:
        """Queue the launch's choices back to the host. Rows that do not take the plain argmax are chosen
        on the device by the sampler, now that every token before this step is appended; a grammar row's
        bitmask is filled while the forward runs (`fill`, started by `_start_next_fill`, else now), and
        the sampler's part that needs no mask is queued meanwhile. Rows that ended since the launch keep
        the argmax (their step is dropped)."""
        if fill is None:
            fill = self._start_next_fill(in_flight)
        rows = [row for row, seq in enumerate(in_flight.seqs)
                if seq.status is Status.RUNNING and not argmax_is_next(seq)]
        if not rows:
            fill.result()  # the fill thread is done with the matchers and the pinned bitmask
            self.runner.finish(in_flight.launch)
            return
        seqs = [in_flight.seqs[row] for row in rows]

        def chosen(logits: torch.Tensor) -> torch.Tensor:
            prepared = prepare_choice(logits, seqs)
            mask = self._chosen_rows_mask(fill.result(), rows, seqs)
            self.timeline.mark("bitmask filled")
            tokens, logprobs = complete_choice(prepared, mask)
            return torch.stack((tokens.float(), logprobs.float()), dim=1)

        self.runner.finish(in_flight.launch, rows, chosen)
        self.timeline.mark("sampler queued")

    def _start_next_fill(self, in_flight: _InFlight, grammar_ends: frozenset[int] = frozenset()) -> Future:
        """Start filling the bitmask of the launch's running grammar rows (by launch row), but for the
        sequences (by id) whose grammar ended on the token just read."""
        states = [seq.grammar if seq.grammar is not None and seq.status is Status.RUNNING
                  and id(seq) not in grammar_ends else None for seq in in_flight.seqs]
        return self._start_fill(states, self.runner.grammar_bitmask(in_flight.launch))

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
        if not following or not all(chosen_on_device(seq) for seq in following):
            return
        if sum(self.blocks.blocks_needed(seq, 1) for seq in following) > self.blocks.num_free_blocks:
            return
        for seq in following:
            self.blocks.allocate(seq, 1)
        if not self.runner.can_launch(following):
            return
        self._launch(following, [rows[id(seq)] for seq in following], pending=1)

    def _read_in_flight(self) -> list[StepOutput]:
        in_flight, self._in_flight = self._in_flight, None
        self._launch_ahead(in_flight)
        self.timeline.mark("launched ahead")
        tokens, logprobs = self.runner.greedy(in_flight.launch)
        self.timeline.mark("tokens read")
        # aborted while its step ran, or stopped one step before this one: its token is dropped
        rows = [(seq, token, logprob) for seq, token, logprob in zip(in_flight.seqs, tokens, logprobs, strict=True)
                if seq.status is not Status.FINISHED]
        going = self._advance_grammars([seq for seq, _, _ in rows], [token for _, token, _ in rows])
        self.timeline.mark("grammars advanced")
        fill = None
        if self._in_flight is not None and self._in_flight.launch.event is None:
            # the next launch's bitmask fills on its own thread while the tokens are appended
            ended = frozenset(id(seq) for (seq, _, _), on in zip(rows, going, strict=True) if not on)
            fill = self._start_next_fill(self._in_flight, ended)
        outputs = []
        for (seq, token, logprob), on in zip(rows, going, strict=True):
            outputs += self._append(seq, token, logprob, on)
            if seq.status is not Status.FINISHED:
                self.blocks.register_full_blocks(seq)
        self.timeline.mark("tokens appended")
        if fill is not None:
            self._finish(self._in_flight, fill)  # the next launch's sampled and grammar rows, now that tokens are in
        return outputs

    def _append(self, seq: Sequence, token: int, logprob: float, grammar_goes_on: bool = True) -> list[StepOutput]:
        params = seq.params
        new_ids, new_logprobs = [token], [logprob]
        seq.cum_logprob += logprob  # an ending token's too: it is part of the choice's probability
        if not grammar_goes_on:
            # The grammar is complete (only stop tokens were allowed), or it cannot go on.
            new_ids, new_logprobs, reason = [], [], "stop"
            seq.generation_logits[-1:] = []  # its row goes with the token
        elif token == params.effective_end_id:
            new_ids, new_logprobs, reason = [], [], "stop"
            seq.generation_logits[-1:] = []
        else:
            seq.token_ids.append(token)
            seq.logprobs.append(logprob)
            reason = self._finish_reason(seq)
        group = self.groups[seq.request_id]
        if reason is not None:
            self.scheduler.remove(seq)
            seq.status, seq.finish_reason = Status.FINISHED, reason
            group.live.remove(seq)
            group.done.append(seq)
            if not group.live:
                self.groups.pop(seq.request_id, None)
        if group.buffered:
            return self._chosen_outputs(group) if not group.live else []
        logits, seq.generation_logits = self._stacked(seq.generation_logits), []
        return [StepOutput(seq.request_id, new_ids, new_logprobs if params.return_logprobs else None,
                           not group.live, reason, seq.index, seq.cum_logprob, logits, group.take_context())]

    @staticmethod
    def _stacked(rows: list[torch.Tensor]) -> torch.Tensor | None:
        return torch.stack(rows) if rows else None

    def _chosen_outputs(self, group: RequestGroup) -> list[StepOutput]:
        """best_of's end: its best n choices, whole, renumbered from 0."""
        chosen = group.chosen()
        return [StepOutput(group.request_id, seq.output_token_ids,
                           seq.logprobs if seq.params.return_logprobs else None, index == len(chosen) - 1,
                           seq.finish_reason, index, seq.cum_logprob, self._stacked(seq.generation_logits),
                           group.take_context() if index == 0 else None)
                for index, seq in enumerate(chosen)]

    def _finish_reason(self, seq: Sequence) -> str | None:
        output = seq.output_token_ids
        for stop in seq.params.stop_token_sequences:
            if stop and len(output) >= len(stop) and output[-len(stop):] == stop:
                return "stop"
        if seq.num_output_tokens >= seq.params.max_new_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    # ---- offline use

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 loras: list[str | None] | None = None) -> list[list[int]]:
        """The first choice's tokens of each prompt; `loras` names each prompt's adapter (None: the base)."""
        return [output.choices[0].token_ids for output in self.generate_outputs(prompts, params, loras)]

    def generate_outputs(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                         loras: list[str | None] | None = None) -> list[RequestOutput]:
        """Every choice of each prompt, with logprobs and logits rows as asked."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        loras = loras or [None] * len(prompts)
        if not len(params_list) == len(loras) == len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} sampling parameters and "
                             f"{len(loras)} adapters")
        for prompt, p, lora in zip(prompts, params_list, loras, strict=True):
            self._check(prompt, p)  # all or nothing: no request is left behind by a later bad one
            self._adapter(lora)
        ids = [f"offline-{index}-{id(prompts)}" for index in range(len(prompts))]
        results = {rid: RequestOutput(rid) for rid in ids}
        for rid, prompt, p, lora in zip(ids, prompts, params_list, loras, strict=True):
            self.add_request(rid, prompt, p, lora)
        while self.has_unfinished():
            for output in self.step():
                if output.request_id in results:
                    results[output.request_id].add(output)
        return [results[rid] for rid in ids]
