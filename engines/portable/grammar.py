"""Grammar-constrained decoding with xgrammar: guides compiled once and cached, one matcher per request.

A guide is what TensorRT-LLM's `GuidedDecodingParams` carries: a type (`json`, `json_schema`, `regex`,
`ebnf_grammar`, and `structural_tag`, free text until a trigger opens a constrained part) and its text.
The compiled grammar depends only on the guide and the tokenizer, so it is cached by guide; compile time
and hits are counted. Each request walks its own matcher: before sampling, the matcher writes the set of
allowed next tokens as a bitmask (host work, done while the GPU computes the forward), the sampler masks
the logits with it, and the matcher then accepts the sampled token. Once the grammar is complete only the
stop tokens are allowed, so the request ends with its end id.

A step's rows are filled and advanced together (`fill_mask`, `advance`): one xgrammar call each for the
whole batch, whose fill runs on xgrammar's own threads without the GIL, so no Python runs per row.
"""
from __future__ import annotations

import functools
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engines.json_grammar import first_line, schema_to_ebnf
from engines.portable.host_copies import to_device

GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar", "structural_tag")


@dataclass(frozen=True)
class Guide:
    """One request's constraint; `text` is empty for `json` (any JSON value)."""

    type: str
    text: str = ""

    def validate(self) -> None:
        if self.type not in GUIDE_TYPES:
            raise ValueError(f"unknown guided decoding guide type {self.type!r}; one of {', '.join(GUIDE_TYPES)}")
        if self.type != "json" and not self.text:
            raise ValueError(f"guided decoding of type {self.type!r} needs a guide")


@dataclass
class GrammarStats:
    """Compiles and cache hits; and the engine loop's host time in the grammar: filling bitmasks (`fills`
    batched calls over `filled_rows` rows) and advancing matchers by the sampled tokens."""

    compiled: int = 0
    cache_hits: int = 0
    compile_seconds: float = 0.0
    fills: int = 0
    filled_rows: int = 0
    fill_seconds: float = 0.0
    advance_seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        total = self.compiled + self.cache_hits
        return self.cache_hits / total if total else 0.0

    def as_dict(self) -> dict:
        return {"compiled": self.compiled, "cache_hits": self.cache_hits, "hit_rate": self.hit_rate,
                "compile_seconds": self.compile_seconds,
                "compile_seconds_per_grammar": self.compile_seconds / self.compiled if self.compiled else 0.0,
                "fills": self.fills, "filled_rows": self.filled_rows, "fill_seconds": self.fill_seconds,
                "advance_seconds": self.advance_seconds}


def _compile(compiler, guide: Guide):
    if guide.type == "json":
        return compiler.compile_builtin_json_grammar()
    if guide.type == "json_schema":
        # Compact separators: a model that likes whitespace cannot spend its token budget on it.
        return compiler.compile_grammar(schema_to_ebnf(guide.text))
    if guide.type == "regex":
        return compiler.compile_regex(guide.text)
    if guide.type == "ebnf_grammar":
        return compiler.compile_grammar(guide.text)
    return _compile_structural_tag(compiler, guide.text)


def _compile_structural_tag(compiler, text: str):
    """vLLM's structural-tag object: {"structures": [{"begin", "schema", "end"}], "triggers": [...]}, as
    xgrammar compiles it (any text until a trigger, then one of the tags), but with each schema through
    `schema_to_ebnf` (any whitespace, as xgrammar allows there), so that its length-bounded strings are
    chains, not xgrammar's counted form (a 10 ms fill inside a `maxLength` tool argument, not 0.005)."""
    from xgrammar.structural_tag import GrammarFormat, StructuralTag, TagFormat, TriggeredTagsFormat

    spec = json.loads(text)
    tags = [TagFormat(begin=item["begin"], end=item["end"],
                      content=GrammarFormat(grammar=schema_to_ebnf(item["schema"], any_whitespace=True)))
            for item in spec["structures"]]
    return compiler.compile_structural_tag(StructuralTag(format=TriggeredTagsFormat(triggers=spec["triggers"],
                                                                                   tags=tags)))


class GrammarCache:
    """Compiled grammars of one tokenizer, least recently used dropped first. Thread-safe: requests are
    compiled on the thread that adds them, never on the engine's step loop."""

    def __init__(self, tokenizer_dir: Path, vocab_size: int, end_id: int | None, max_entries: int = 512):
        import xgrammar
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        stop_ids = [end_id] if end_id is not None else None
        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
        self.vocab_size = vocab_size
        self._compiler = xgrammar.GrammarCompiler(self.info, max_threads=2, cache_enabled=False)
        self._cache: OrderedDict[Guide, object] = OrderedDict()
        self._lock = threading.Lock()
        self._compile_lock = threading.Lock()
        self.max_entries = max_entries
        self.stats = GrammarStats()

    def compiled(self, guide: Guide):
        guide.validate()
        with self._lock:
            if guide in self._cache:
                self._cache.move_to_end(guide)
                self.stats.cache_hits += 1
                return self._cache[guide]
        with self._compile_lock:  # one compile at a time; a second request for the same guide then hits
            with self._lock:
                if guide in self._cache:
                    self.stats.cache_hits += 1
                    return self._cache[guide]
            started = time.perf_counter()
            try:
                grammar = _compile(self._compiler, guide)
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"invalid {guide.type} guide: {first_line(exc)}") from exc
            elapsed = time.perf_counter() - started
        with self._lock:
            self.stats.compiled += 1
            self.stats.compile_seconds += elapsed
            self._cache[guide] = grammar
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return grammar

    def matcher(self, guide: Guide) -> "GrammarState":
        import xgrammar

        return GrammarState(xgrammar.GrammarMatcher(self.compiled(guide)), frozenset(self.info.stop_token_ids))


@dataclass(eq=False)
class GrammarState:
    """One request's position in its grammar."""

    matcher: object
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> bool:
        """Advance by one sampled token; False if the grammar does not allow it (nothing is changed)."""
        return bool(self.matcher.accept_token(token))

    def is_stop(self, token: int) -> bool:
        return token in self.stop_token_ids


@dataclass
class GrammarMask:
    """The bitmask of a batch's constrained rows, filled on the host before the logits are read."""

    rows: list[int]
    bitmask: torch.Tensor


def fill_mask(states: list[GrammarState | None], vocab_size: int,
              out: torch.Tensor | None = None) -> GrammarMask | None:
    """The next-token bitmask of every row with a grammar state (None: an unconstrained row), written into
    `out` (int32 [rows >= len(states), words], e.g. pinned memory the device copies from) or a new tensor."""
    rows = [row for row, state in enumerate(states) if state is not None]
    if not rows:
        return None
    import xgrammar

    bitmask = xgrammar.allocate_token_bitmask(len(states), vocab_size) if out is None else out[:len(states)]
    if len(rows) == 1:
        states[rows[0]].fill(bitmask, rows[0])
    else:  # xgrammar's own thread pool fills the rows in parallel (it releases the GIL)
        _batch_matcher().batch_fill_next_token_bitmask([states[row].matcher for row in rows], bitmask, indices=rows)
    return GrammarMask(rows, bitmask)


@functools.cache
def _batch_matcher():
    import xgrammar

    return xgrammar.BatchGrammarMatcher(max_threads="auto")


def apply_mask(logits: torch.Tensor, mask: GrammarMask | None) -> torch.Tensor:
    """Disallowed tokens of the constrained rows to -inf, in place (the CPU kernel on CPU, Triton on CUDA)."""
    if mask is None:
        return logits
    import xgrammar

    bitmask, rows = to_device(mask.bitmask, logits.device), mask.rows
    if logits.is_cuda:
        rows = to_device(rows, logits.device, torch.int32)  # xgrammar would copy a list from pageable memory
    if logits.dtype != torch.float32:  # xgrammar's kernels take float32 logits
        masked = logits.float()
        xgrammar.apply_token_bitmask_inplace(masked, bitmask, indices=rows)
        logits.copy_(masked)
        return logits
    xgrammar.apply_token_bitmask_inplace(logits, bitmask, indices=rows)
    return logits


def advance(states: list[GrammarState], tokens: list[int]) -> list[bool]:
    """Advance each grammar by its row's sampled token, in one xgrammar call for the batch. False for a row
    that ends here: its token is a stop token (the grammar was complete), or one the grammar rejects (it
    cannot go on); such a row's matcher is left as it was."""
    ends = [token in state.stop_token_ids for state, token in zip(states, tokens, strict=True)]
    going = [row for row, end in enumerate(ends) if not end]
    if len(going) == 1:
        row = going[0]
        ends[row] = not states[row].accept(tokens[row])
    elif going:
        accepted = _batch_matcher().batch_accept_token([states[row].matcher for row in going],
                                                       [tokens[row] for row in going])
        for row, ok in zip(going, accepted, strict=True):
            ends[row] = not ok
    return [not end for end in ends]

