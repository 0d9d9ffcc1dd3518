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
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        if values["artifact_dir"] is None:
            raise ValueError("no artifact: pass --artifact DIR or set INGOT_ARTIFACT_DIR")
        return cls(**values)

    def with_overrides(self, **changes) -> "Settings":
        return replace(self, **changes)
