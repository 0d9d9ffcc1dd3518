"""Gateway settings: one frozen object built from flags and INGOT_* environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

# Names TGI's clients send when they name no model: "tgi" (TGI's docs), "dummy" (huggingface_hub given a URL).
DEFAULT_MODEL_ALIASES = "tgi,dummy"


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
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        if values["artifact_dir"] is None:
            raise ValueError("no artifact: pass --artifact DIR or set INGOT_ARTIFACT_DIR")
        if (values["ssl_certfile"] is None) != (values["ssl_keyfile"] is None):
            raise ValueError("TLS needs both --ssl-certfile and --ssl-keyfile (INGOT_SSL_CERTFILE, INGOT_SSL_KEYFILE)")
        return cls(**values)

    def with_overrides(self, **changes) -> "Settings":
        return replace(self, **changes)
