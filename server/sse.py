"""Server-sent events framing for streamed completions.

Most chunks of a stream differ only in their text. `TextEvents` renders one response's chunk JSON once,
with a marker where the text goes, so each token costs one string escape and a join instead of a pydantic
model and a JSON dump; the bytes are the same as rendering the whole chunk.
"""
from __future__ import annotations

import json
import uuid
from json.encoder import encode_basestring  # the C escaper json.dumps(ensure_ascii=False) uses for strings

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"
TEXT_MARK = f"ingot-text-{uuid.uuid4().hex}"


def event(payload: BaseModel | dict, exclude=None) -> bytes:
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json(exclude_none=False, exclude=exclude)
    else:
        data = json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class TextEvents:
    """Events of one response whose chunks differ only by their text: `events(text)` is one event's bytes."""

    def __init__(self, rendered_with_mark: str):
        head, mark, tail = rendered_with_mark.partition(json.dumps(TEXT_MARK))
        if not mark or TEXT_MARK in tail:
            raise ValueError("the rendered chunk must hold the text marker exactly once")
        self.head, self.tail = f"data: {head}", f"{tail}\n\n"

    def __call__(self, text: str) -> bytes:
        return (self.head + encode_basestring(text) + self.tail).encode()
