"""Gateway settings: one frozen object built from flags and INGOT_* environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

# Names TGI's clients send when they name no model: "tgi" (TGI's docs), "dummy" (huggingface_hub given a URL).
DEFAULT_MODEL_ALIASES = "tgi,dummy"
# Triton accepts a ping every 5 s at most (engines/triton/launcher.py MIN_PING_INTERVAL_MS, and the k8s launch script).
MIN_KEEPALIVE_S = 5.0


@dataclass(frozen=True)
class Settings:
    artifact_dir: Path
    triton_url: str = "127.0.0.1:8001"
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_keys_file: Path | None = None
    allow_anonymous: bool = False
    max_model_len: int | None = None
    model_aliases: tuple[str, ...] = tuple(DEFAULT_MODEL_ALIASES.split(","))  # more names for the served model
    # Admission control (server/admission.py) and per-key limits (server/limits.py).
    max_body_bytes: int = 8 << 20
    max_prompts_per_request: int = 128
    max_in_flight: int = 1024  # per gateway worker
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    usage_log: Path | None = None
    # TLS served by the gateway itself (uvicorn's ssl_certfile / ssl_keyfile).
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    request_timeout_s: float = 600.0  # the whole generation; 0: no deadline
    first_token_timeout_s: float = 60.0  # until the engine's first response (queueing and prefill); 0: none
    triton_keepalive_s: float = 30.0  # gRPC keepalive pings toward Triton while requests are open; 0: none
    drain_timeout_s: float = 30.0  # on SIGTERM/SIGINT: how long running streams may go on before they are ended
    # How long an idle client connection stays open (uvicorn's timeout_keep_alive, whose own default is 5 s): longer
    # than the idle timeouts of the load balancers and client pools in front (AWS ALB 60 s, nginx upstreams 60 s),
    # so that the gateway is never the side that closes a connection a client is about to reuse.
    http_keepalive_s: float = 75.0
    workers: int | None = None  # gateway processes; None: half the cores (server.workers.default_workers)
    # LoRA adapters loaded at start (name, PEFT folder or s3:// prefix) and the admin key of the load/unload routes
    lora_modules: tuple[tuple[str, str], ...] = ()
    admin_key: str | None = field(default=None, repr=False)
    admin_key_file: Path | None = None

    def __post_init__(self) -> None:
        for name in ("request_timeout_s", "first_token_timeout_s", "triton_keepalive_s", "drain_timeout_s",
                     "http_keepalive_s"):
            value = getattr(self, name)
            if not 0 <= value < float("inf"):
                raise ValueError(f"{name.removesuffix('_s').replace('_', '-')}: expected seconds >= 0, got {value}")
        if 0 < self.triton_keepalive_s < MIN_KEEPALIVE_S:
            raise ValueError(f"triton-keepalive: 0 (off) or at least {MIN_KEEPALIVE_S:g}s between pings (Triton "
                             f"drops connections that ping more often), got {self.triton_keepalive_s:g}")
        if self.workers is not None and not 1 <= self.workers <= 64:
            raise ValueError(f"workers: expected 1 to 64 gateway processes, got {self.workers}")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        values: dict = {
            "artifact_dir": Path(env["INGOT_ARTIFACT_DIR"]) if env.get("INGOT_ARTIFACT_DIR") else None,
            "triton_url": env.get("INGOT_TRITON_URL", cls.triton_url),
            "host": env.get("INGOT_HOST", cls.host),
            "port": int(env.get("INGOT_PORT", cls.port)),
            "served_model_name": env.get("INGOT_SERVED_MODEL_NAME") or None,
            "api_keys": tuple(k.strip() for k in env.get("INGOT_API_KEYS", "").split(",") if k.strip()),
            "api_keys_file": Path(env["INGOT_API_KEYS_FILE"]) if env.get("INGOT_API_KEYS_FILE") else None,
            "allow_anonymous": env.get("INGOT_ALLOW_ANONYMOUS", "").lower() in ("1", "true", "yes"),
            "max_model_len": int(env["INGOT_MAX_MODEL_LEN"]) if env.get("INGOT_MAX_MODEL_LEN") else None,
            "model_aliases": tuple(a.strip() for a in env.get("INGOT_MODEL_ALIASES", DEFAULT_MODEL_ALIASES).split(",")
                                   if a.strip()),
            "max_body_bytes": int(env.get("INGOT_MAX_BODY_BYTES", cls.max_body_bytes)),
            "max_prompts_per_request": int(env.get("INGOT_MAX_PROMPTS_PER_REQUEST", cls.max_prompts_per_request)),
            "max_in_flight": int(env.get("INGOT_MAX_IN_FLIGHT", cls.max_in_flight)),
            "redis_url": env.get("INGOT_REDIS_URL") or None,
            "usage_log": Path(env["INGOT_USAGE_LOG"]) if env.get("INGOT_USAGE_LOG") else None,
            "ssl_certfile": Path(env["INGOT_SSL_CERTFILE"]) if env.get("INGOT_SSL_CERTFILE") else None,
            "ssl_keyfile": Path(env["INGOT_SSL_KEYFILE"]) if env.get("INGOT_SSL_KEYFILE") else None,
            "request_timeout_s": _seconds(env, "INGOT_REQUEST_TIMEOUT", cls.request_timeout_s),
            "first_token_timeout_s": _seconds(env, "INGOT_FIRST_TOKEN_TIMEOUT", cls.first_token_timeout_s),
            "triton_keepalive_s": _seconds(env, "INGOT_TRITON_KEEPALIVE", cls.triton_keepalive_s),
            "drain_timeout_s": _seconds(env, "INGOT_DRAIN_TIMEOUT", cls.drain_timeout_s),
            "http_keepalive_s": _seconds(env, "INGOT_HTTP_KEEPALIVE", cls.http_keepalive_s),
            "workers": int(env["INGOT_GATEWAY_WORKERS"]) if env.get("INGOT_GATEWAY_WORKERS") else None,
            "lora_modules": _lora_modules(env.get("INGOT_LORA_MODULES", "")),
            "admin_key": env.get("INGOT_ADMIN_KEY") or None,
            "admin_key_file": Path(env["INGOT_ADMIN_KEY_FILE"]) if env.get("INGOT_ADMIN_KEY_FILE") else None,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        if values["artifact_dir"] is None:
            raise ValueError("no artifact: pass --artifact DIR or set INGOT_ARTIFACT_DIR")
        if (values["ssl_certfile"] is None) != (values["ssl_keyfile"] is None):
            raise ValueError("TLS needs both --ssl-certfile and --ssl-keyfile (INGOT_SSL_CERTFILE, INGOT_SSL_KEYFILE)")
        return cls(**values)

    def with_overrides(self, **changes) -> "Settings":
        return replace(self, **changes)


def _seconds(env, name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name}={raw!r}: expected a finite number of seconds, 0 or more")
    return value


def _lora_modules(text: str) -> tuple[tuple[str, str], ...]:
    """INGOT_LORA_MODULES: NAME=PATH items separated by commas."""
    from server.lora import parse_lora_modules

    return tuple(parse_lora_modules([item for item in text.split(",") if item.strip()]).items())
