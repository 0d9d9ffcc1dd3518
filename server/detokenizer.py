"""Incremental detokenization that never emits a broken UTF-8 character, in the `tokenizers` library itself.

Byte-level tokenizers split one character over several tokens; decoding such a prefix yields U+FFFD.
`tokenizers`' DecodeStream keeps a short window of ids and returns text only once the window ends on a
whole character, all in Rust: per token one call, no Python-side list slicing or second decode.
The streamed pieces joined equal one decode of all the ids.
"""
from __future__ import annotations

from tokenizers import Tokenizer as RawTokenizer

try:
    from tokenizers.decoders import DecodeStream
except ImportError:  # tokenizers before 0.21 (a GPU image's own): the window decoder below does the same in Python
    DecodeStream = None

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: RawTokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens) if DecodeStream is not None else None
        self._emitted_ids: list[int] = []  # the ids of the last piece of text, the context for `flush`
        self._pending: list[int] = []  # ids whose text is not emitted yet (a partial character)
        self._fallback = _WindowDecoder(tokenizer, skip_special_tokens, [], []) if self._stream is None else None

    def add(self, new_ids: list[int]) -> str:
        """Text that the new ids complete; may be empty while a character is still partial."""
        if not new_ids:
            return ""
        if self._fallback is not None:
            return self._fallback.add(new_ids)
        try:
            text = self._stream.step(self.tokenizer, new_ids)
        except Exception:  # a decoder whose window text does not extend its prefix: decode in Python instead
            self._fallback = _WindowDecoder(self.tokenizer, self.skip_special_tokens,
                                            self._emitted_ids, self._pending)
            return self._fallback.add(new_ids)
        if text is None:
            self._pending.extend(new_ids)
            return ""
        self._emitted_ids, self._pending = self._pending + new_ids, []
        return text

    def flush(self) -> str:
        """At the end: whatever is left, even an incomplete character (shown as U+FFFD)."""
        if self._fallback is not None:
            return self._fallback.flush()
        if not self._pending:
            return ""
        context, pending, self._pending = self._emitted_ids, self._pending, []
        return self._decode(context + pending)[len(self._decode(context)):]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)


class _WindowDecoder:
    """The same algorithm in Python over the raw tokenizer's decode: two decodes of a short window per call."""

    def __init__(self, tokenizer: RawTokenizer, skip_special_tokens: bool, context: list[int], pending: list[int]):
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.ids = context + pending
        self.prefix_offset, self.read_offset = 0, len(context)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        window_text = self._decode(self.ids[self.prefix_offset:])
        if len(window_text) <= len(prefix_text) or window_text.endswith(REPLACEMENT):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return window_text[len(prefix_text):]

    def flush(self) -> str:
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        window_text = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return window_text[len(prefix_text):]
