"""The servers a benchmark talks to and the three request shapes they speak.

A target has an API (`chat`: /v1/chat/completions, `completions`: /v1/completions, `tgi`: TGI's native
/generate_stream) and a server kind (`ingot`, `vllm`, `tgi`, `openai`, `llamacpp`) that decides which extensions
it understands: only ingot and vLLM get `ignore_eos`, which forces every answer to `max_tokens` (llama.cpp
gets `min_tokens` for that, with `min-tokens=1`, and `repeat_penalty` 1.0).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

from benchmarks.workload import BenchRequest

APIS = ("chat", "completions", "tgi")
SERVERS = ("ingot", "vllm", "tgi", "openai", "llamacpp")
IGNORE_EOS_SERVERS = ("ingot", "vllm")


@dataclass(frozen=True)
class Target:
    name: str
    url: str                        # base URL, without /v1
    api: str = "chat"
    server: str = "openai"
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    min_tokens: bool = False        # send min_tokens = max_tokens (for servers without ignore_eos)
    temperature: float | None = None  # sent when set (OpenAI-style APIs); 0 asks for greedy decoding

    @property
    def endpoint(self) -> str:
        return {"chat": "/v1/chat/completions", "completions": "/v1/completions",
                "tgi": "/generate_stream"}[self.api]

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def payload(self, request: BenchRequest) -> dict:
        if self.api == "tgi":
            return {"inputs": request.prompt, "parameters": {"max_new_tokens": request.max_tokens, "details": True}}
        body: dict = {"model": self.model, "max_tokens": request.max_tokens, "stream": True,
                      "stream_options": {"include_usage": True}}
        if self.api == "chat":
            body["messages"] = request.chat_messages()
        else:
            body["prompt"] = request.prompt
        if self.server in IGNORE_EOS_SERVERS:
            body["ignore_eos"] = True
        if self.min_tokens:
            body["min_tokens"] = request.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.server == "llamacpp":
            # llama-cpp-python's server applies repeat_penalty 1.1 unless told otherwise, even at
            # temperature 0: the comparison must decode like the other targets.
            body["repeat_penalty"] = 1.0
        return body


def parse_target(spec: str, defaults: Target, index: int) -> Target:
    """`URL` or `url=URL,name=N,api=chat,server=ingot,model=M,api-key-env=VAR,min-tokens=1`."""
    if "=" not in spec.split(",", 1)[0]:
        fields = {"url": spec}
    else:
        fields = dict(part.split("=", 1) for part in spec.split(",") if part)
    known = {"url", "name", "api", "server", "model", "api-key-env", "min-tokens"}
    unknown = set(fields) - known
    if unknown or "url" not in fields:
        raise ValueError(f"target {spec!r}: needs url=..., and only {sorted(known)} are known")
    target = replace(defaults, url=normalize_url(fields["url"]), name=fields.get("name", f"target{index + 1}"),
                     api=fields.get("api", defaults.api), server=fields.get("server", defaults.server),
                     model=fields.get("model", defaults.model),
                     api_key_env=fields.get("api-key-env", defaults.api_key_env),
                     min_tokens=fields.get("min-tokens", str(defaults.min_tokens)).lower() in ("1", "true", "yes"))
    if target.api not in APIS:
        raise ValueError(f"target {target.name}: api must be one of {APIS}, got {target.api!r}")
    if target.server not in SERVERS:
        raise ValueError(f"target {target.name}: server must be one of {SERVERS}, got {target.server!r}")
    return target


def normalize_url(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    return url[:-3] if url.endswith("/v1") else url
