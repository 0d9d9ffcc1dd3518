"""One measured request: when it was sent, when each piece of output arrived, what the server counted."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RequestRecord:
    """Times are seconds since the start of the run the request belongs to."""
    index: int
    send_time: float
    end_time: float = 0.0
    first_token_time: float | None = None
    chunk_times: list[float] = field(default_factory=list)   # arrival of every chunk that carried output
    prompt_tokens: int | None = None
    output_tokens: int = 0
    usage_reported: bool = False     # token counts come from the server's usage, not from counting chunks
    expected_prompt_tokens: int | None = None
    max_tokens: int = 0
    status: int | None = None
    error: str | None = None         # a short kind: connect, timeout, http_401, http_500, stream_broken, ...
    error_detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.send_time

    @property
    def e2e(self) -> float:
        return self.end_time - self.send_time

    @property
    def decode_time(self) -> float | None:
        return None if self.first_token_time is None else self.end_time - self.first_token_time

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first."""
        if self.decode_time is None or self.output_tokens < 2:
            return None
        return self.decode_time / (self.output_tokens - 1)

    @property
    def decode_speed(self) -> float | None:
        """Per-user decode speed in tokens/s: (output_tokens - 1) / (e2e - ttft)."""
        if self.decode_time is None or self.output_tokens < 2 or self.decode_time <= 0:
            return None
        return (self.output_tokens - 1) / self.decode_time

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(ttft=self.ttft, e2e=self.e2e, tpot=self.tpot, decode_speed=self.decode_speed)
        return data
