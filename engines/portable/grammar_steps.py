"""The engine's side of constrained decoding: the compiled-grammar cache, the bitmask of a step's grammar
rows filled on the host (while the forward runs), and the matchers advanced by the sampled tokens, each in
one batched xgrammar call, with the host time they take counted in the cache's stats.

In the pipelined decode the bitmask of the launch in flight is filled on a thread of its own (xgrammar
releases the GIL), started as soon as the matchers have accepted the tokens before it: the engine loop
meanwhile appends those tokens and queues the part of the sampler that needs no mask. A row's fill time
is uneven (a few milliseconds inside a length-bounded string, microseconds elsewhere), so this keeps
the slowest row's fill, not the sum of everything the host does, in the way of the device.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from engines.portable.grammar import GrammarCache, GrammarMask, advance, fill_mask
from engines.portable.sequence import Sequence


class GrammarSteps:
    """Mixed into LLMEngine, whose runner, model config and tokenizer directory it uses."""

    _grammars: GrammarCache | None  # made by `grammars`, under `_grammar_lock` (both set by the engine)
    _grammar_lock: threading.Lock
    _fill_thread: ThreadPoolExecutor | None = None

    def grammars(self, end_id: int | None = None) -> GrammarCache:
        """The compiled-grammar cache, made on the first guided request (it loads the tokenizer)."""
        with self._grammar_lock:
            if self._grammars is None:
                if self.tokenizer_dir is None:
                    raise ValueError("guided decoding needs the model's tokenizer; this engine was built without one")
                self._grammars = GrammarCache(self.tokenizer_dir, self.model_config.vocab_size, end_id)
            return self._grammars

    def _fill_mask(self, states: list, out: torch.Tensor | None = None) -> GrammarMask | None:
        if all(state is None for state in states):
            return None
        started = time.perf_counter()
        mask = fill_mask(states, self.model_config.vocab_size, out)
        stats = self._grammars.stats
        stats.fills, stats.filled_rows = stats.fills + 1, stats.filled_rows + len(mask.rows)
        stats.fill_seconds += time.perf_counter() - started
        return mask

    def _advance_grammars(self, seqs: list[Sequence], tokens: list[int]) -> list[bool]:
        """Whether each sequence's grammar goes on after its token (True without a grammar), all advanced
        in one batched call."""
        going = [True] * len(seqs)
        rows = [row for row, seq in enumerate(seqs) if seq.grammar is not None]
        if rows:
            started = time.perf_counter()
            for row, on in zip(rows, advance([seqs[r].grammar for r in rows], [tokens[r] for r in rows]),
                               strict=True):
                going[row] = on
            self._grammars.stats.advance_seconds += time.perf_counter() - started
        return going

    def _start_fill(self, states: list, out: torch.Tensor | None) -> Future:
        """Fill the bitmask of `states` (a launch's rows, None where unconstrained) on the fill thread;
        the future's result is `_fill_mask`'s."""
        if all(state is None for state in states):
            done: Future = Future()
            done.set_result(None)
            return done
        if self._fill_thread is None:
            self._fill_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-fill")
        started = threading.Event()

        def fill() -> GrammarMask | None:
            started.set()
            return self._fill_mask(states, out)

        future = self._fill_thread.submit(fill)
        # Wait until the fill thread runs: it holds the GIL until xgrammar's call releases it, and a busy
        # loop thread would otherwise keep it from starting for up to the interpreter's switch interval.
        started.wait()
        return future

    @staticmethod
    def _chosen_rows_mask(filled: GrammarMask | None, rows: list[int], seqs: list[Sequence]) -> GrammarMask | None:
        """The mask of the rows a launch's sampler chooses (`rows` of the launch, their sequences `seqs`),
        from one filled by launch row: row i of the bitmask must be the grammar of `seqs[i]`."""
        positions = [index for index, seq in enumerate(seqs) if seq.grammar is not None]
        if not positions:
            return None
        if filled is None or not {rows[index] for index in positions} <= set(filled.rows):
            raise RuntimeError("a grammar row of the launch has no bitmask filled")
        if all(rows[index] == index for index in positions):
            return GrammarMask(positions, filled.bitmask)
        return GrammarMask(positions, filled.bitmask[torch.tensor(rows)])
