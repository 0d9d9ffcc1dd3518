"""The engine's side of constrained decoding: the compiled-grammar cache, the bitmask of a step's grammar
rows filled on the host (while the forward runs), and the matchers advanced by the sampled tokens, each in
one batched xgrammar call, with the host time they take counted in the cache's stats."""
from __future__ import annotations

import threading
import time

import torch

from engines.portable.grammar import GrammarCache, GrammarMask, advance, fill_mask
from engines.portable.sequence import Sequence


class GrammarSteps:
    """Mixed into LLMEngine, whose runner, model config and tokenizer directory it uses."""

    _grammars: GrammarCache | None  # made by `grammars`, under `_grammar_lock` (both set by the engine)
    _grammar_lock: threading.Lock

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
