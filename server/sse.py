"""Server-sent events framing for streamed completions."""
from __future__ import annotations

import json

from pydantic import BaseModel

DONE = "data: [DONE]\n\n"


def event(payload: BaseModel | dict) -> str:
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json(exclude_none=False)
    else:
        data = json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"
