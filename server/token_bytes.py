"""Each token's own bytes, for the `bytes` of chat logprobs.

A token may hold part of a UTF-8 character (CJK, emoji): decoding it alone gives U+FFFD, so its bytes
must come from the vocabulary itself. Byte-level BPE vocabularies (GPT-2, Llama 3, SmolLM) spell every
byte as one printable character (GPT-2's `bytes_to_unicode` table); SentencePiece vocabularies (Llama 2,
Mistral) write raw bytes as `<0xNN>` and spaces as `▁`. Special tokens are their text.
"""
from __future__ import annotations

import re
from functools import lru_cache

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: printable bytes as themselves, the others shifted to 256+."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    codes, shift = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + shift)
            shift += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


class TokenBytes:
    """Maps token ids to their bytes for one tokenizer (a transformers fast tokenizer)."""

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer
        decoder = getattr(hf_tokenizer, "backend_tokenizer", None)
        decoder = getattr(decoder, "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel" or "ByteLevel" in repr(decoder)
        self._special = set(getattr(hf_tokenizer, "all_special_ids", []) or [])
        self._cache: dict[int, bytes] = {}

    def __call__(self, token_id: int) -> bytes:
        cached = self._cache.get(token_id)
        if cached is None:
            cached = self._cache[token_id] = self._bytes_of(token_id)
        return cached

    def _bytes_of(self, token_id: int) -> bytes:
        piece = self._tok.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if token_id in self._special:
            return piece.encode("utf-8")
        if self.byte_level:
            table = _byte_level_decoder()
            if all(char in table for char in piece):
                return bytes(table[char] for char in piece)
            return piece.encode("utf-8")  # an added token written as plain text
        match = _BYTE_PIECE.match(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        return piece.replace("\u2581", " ").encode("utf-8")
