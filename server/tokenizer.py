"""The gateway's tokenizer: prompts and chat templates in, token ids out, and back to text."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

from server.errors import bad_request
from server.token_bytes import TokenBytes


class Tokenizer:
    def __init__(self, tokenizer_dir: Path):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        self.raw = self._tok.backend_tokenizer  # the `tokenizers` Tokenizer: per-token decoding skips the wrapper
        self.vocab_size = len(self._tok)
        self.eos_token_id = self._tok.eos_token_id
        self.pad_token_id = self._tok.pad_token_id if self._tok.pad_token_id is not None else self.eos_token_id
        self.has_chat_template = bool(getattr(self._tok, "chat_template", None))
        self.token_bytes = TokenBytes(self._tok)  # each token's own bytes, for chat logprobs

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=True))

    @property
    def chat_template(self) -> str | None:
        template = getattr(self._tok, "chat_template", None)
        return template if isinstance(template, str) else None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None) -> list[int]:
        if not self.has_chat_template:
            raise bad_request("This model has no chat template; use /v1/completions.", "messages")
        try:
            text = self._tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                                 tools=tools)
        except Exception as exc:  # jinja raises its own errors, e.g. raise_exception() in templates
            raise bad_request(f"The chat template rejected these messages: {exc}", "messages") from exc
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    def token_text(self, token_id: int) -> str:
        return self._tok.convert_tokens_to_string([self._tok.convert_ids_to_tokens(token_id)])

    def encode_stop_sequences(self, stops: list[str]) -> list[list[int]]:
        return [list(self._tok.encode(stop, add_special_tokens=False)) for stop in stops]

    @cached_property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self._tok.all_special_ids)

    def encode_with_offsets(self, text: str, add_special_tokens: bool = True) -> list[tuple[int, int, int]]:
        """(id, start, stop) per token, the offsets in characters of `text` (TGI's /tokenize)."""
        encoded = self._tok(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return [(int(i), int(a), int(b)) for i, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"],
                                                              strict=True)]

    def encode_plain(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens))
