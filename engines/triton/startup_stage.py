"""Which stage a starting tritonserver is in, read from its log.

Triton opens its HTTP and gRPC endpoints only after every model of the repository has loaded, so its
readiness endpoint cannot tell "the server is starting" from "a model is loading" from "the endpoints
are opening": the log can. Triton 2.51 writes, in this order (model_lifecycle.cc, python_be.cc,
grpc_server.cc, http_server.cc):

    "loading: tensorrt_llm:1"
    "TRITONBACKEND_ModelInstanceInitialize: tensorrt_llm_0_0 (CPU device 0)"
    "successfully loaded 'tensorrt_llm'"
    "Started GRPCInferenceService at 127.0.0.1:8001"
"""
from __future__ import annotations

import re
from pathlib import Path

LOADING = re.compile(r'"loading: ([^:"]+):\d+"')
INSTANCE = re.compile(r'"TRITONBACKEND_ModelInstanceInitialize: (\S+)')
LOADED = re.compile(r"\"successfully loaded '([^']+)'")
ENDPOINTS = re.compile(r'"Started (?:GRPCInferenceService|HTTPService) at')


def startup_stage(log_text: str) -> str:
    """'server starting', 'model loading: NAME', 'model instance starting: NAME',
    'opening endpoints' or 'endpoints open', from the log written so far."""
    loading = LOADING.findall(log_text)
    loaded = set(LOADED.findall(log_text))
    if ENDPOINTS.search(log_text):
        return "endpoints open"
    if loading and loaded >= set(loading):
        return "opening endpoints"
    pending = [name for name in loading if name not in loaded]
    if not pending:
        return "server starting"
    instances = [name for name in INSTANCE.findall(log_text) if name.rsplit("_", 2)[0] in pending]
    if instances:
        return f"model instance starting: {instances[-1]}"
    return f"model loading: {', '.join(pending)}"


def read_stage(log_path: Path) -> str:
    try:
        return startup_stage(Path(log_path).read_text(errors="replace"))
    except OSError:
        return "server starting"
