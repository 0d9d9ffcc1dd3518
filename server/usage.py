"""Per-key usage: Prometheus counters labelled by key id (never the key) and a JSON-lines usage log.

One log line per finished /v1 request, appended with a single write (lines stay whole with several gateway
workers appending to one file):
{"ts": 1763860000.123, "key_id": "team-a", "method": "POST", "route": "/v1/chat/completions", "status": 200,
 "prompt_tokens": 12, "completion_tokens": 30, "duration_s": 0.84, "request_id": "..."}
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class RequestUsage:
    """What one request used; the generation code adds to it (request.state.usage), the middleware records it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class UsageRecord:
    ts: float
    key_id: str
    method: str
    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    duration_s: float
    request_id: str


class UsageLog:
    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def write(self, record: UsageRecord) -> None:
        os.write(self._fd, (json.dumps(asdict(record), ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        os.close(self._fd)


def usage_record(key_id: str, method: str, route: str, status: int, usage: RequestUsage, started: float,
                 request_id: str) -> UsageRecord:
    now = time.time()
    return UsageRecord(round(now, 3), key_id, method, route, status, usage.prompt_tokens, usage.completion_tokens,
                       round(now - started, 4), request_id)
