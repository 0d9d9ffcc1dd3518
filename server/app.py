"""The gateway's app factory: settings in, a FastAPI app speaking the OpenAI API out."""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from importlib import metadata

from fastapi import FastAPI

from engines.manifest import read_manifest
from server.auth import KeyStore
from server.docs import install_docs
from server.drain import Drain
from server.errors import install_error_handlers
from server.metrics import Metrics
from server.embeddings import load_embeddings
from server.engine_features import EngineFeatures
from server.admission import body_size_check, in_flight_check, key_limits_check
from server.limits import LocalLimiter
from server.lora import LoraEngineClient, load_adapters
from server.middleware import Check, GatewayMiddleware, api_key_check
from server.openapi import document_error_statuses
from server.routes import chat, completions, embeddings, health, lora, models, sagemaker, tgi, tokenize
from server.settings import Settings
from server.surrogates import CHECK as REJECT_LONE_SURROGATES
from server.tokenizer import Tokenizer
from server.triton_client import TritonEngineClient
from server.usage import UsageLog


@dataclass(frozen=True)
class ServedModel:
    name: str
    max_model_len: int
    created: int
    aliases: tuple[str, ...] = ()
    fingerprint: str | None = None  # system_fingerprint: changes when the artifact or the server changes
    engine: str = "portable"  # the artifact's target: "portable" or "trtllm" (what constrained decoding can use)
    features: EngineFeatures = EngineFeatures()  # logits rows and beams the engine returns (engine_features.py)
    adapters: object = field(default=None, compare=False)  # server.lora.AdapterRegistry: LoRA adapters by name

    def answers_to(self, name: str) -> bool:
        return name == self.name or name in self.aliases or (self.adapters is not None and name in self.adapters)


def system_fingerprint(manifest) -> str:
    """OpenAI's system_fingerprint: a digest of the artifact's files (weights, engine settings, tokenizer) and
    of this server's version, so a client can tell when answers may differ for reasons beyond its request."""
    try:
        version = metadata.version("ingot")
    except metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256(json.dumps([manifest.files, manifest.target, version], sort_keys=True).encode())
    return "fp_" + digest.hexdigest()[:12]


def load_model(settings: Settings) -> tuple[ServedModel, Tokenizer]:
    manifest = read_manifest(settings.artifact_dir)
    tokenizer = Tokenizer(settings.artifact_dir / manifest.tokenizer_dir)
    # the served context: the artifact's (what the engine's KV cache holds), or less when capped here
    max_model_len = min(settings.max_model_len or manifest.max_model_len, manifest.max_model_len)
    model = ServedModel(settings.served_model_name or manifest.model_name, max_model_len, int(time.time()),
                        settings.model_aliases, system_fingerprint(manifest), manifest.target,
                        EngineFeatures.of_manifest(manifest))
    return model, tokenizer


def make_limiter(settings: Settings):
    """Per-key limits in Redis when configured (shared by every worker and pod), else in this process."""
    if settings.redis_url:
        from server.limits_redis import RedisLimiter

        return RedisLimiter(settings.redis_url)
    return LocalLimiter()


def create_app(settings: Settings, engine: TritonEngineClient | None = None) -> FastAPI:
    keys = KeyStore.from_sources(list(settings.api_keys), settings.api_keys_file)
    if not keys.enabled and not settings.allow_anonymous:
        raise ValueError("no API keys: set INGOT_API_KEYS or INGOT_API_KEYS_FILE "
                         "(or INGOT_ALLOW_ANONYMOUS=1 to serve without auth)")
    model, tokenizer = load_model(settings)
    adapters = load_adapters(settings, model.name)
    model = replace(model, adapters=adapters)
    triton = engine or TritonEngineClient(settings.triton_url, keepalive_s=settings.triton_keepalive_s)
    engine = LoraEngineClient(triton, adapters)
    limiter = make_limiter(settings)
    usage_log = UsageLog(settings.usage_log) if settings.usage_log else None

    drain = Drain(settings.drain_timeout_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        drain.install()  # SIGTERM/SIGINT drain first, then reach uvicorn
        yield
        await engine.close()
        if app.state.embeddings is not None:
            await app.state.embeddings.close()
        await limiter.close()
        if usage_log is not None:
            usage_log.close()

    app = FastAPI(title="Ingot", version="0.1.0", lifespan=lifespan, dependencies=[REJECT_LONE_SURROGATES],
                  docs_url=None, redoc_url=None)
    install_docs(app)  # /docs and /redoc with their assets from installed packages, no CDN
    app.state.settings, app.state.keys, app.state.metrics = settings, keys, Metrics()
    app.state.model, app.state.tokenizer, app.state.engine = model, tokenizer, engine
    app.state.drain = drain
    app.state.adapters, app.state.admin_key = adapters, lora.admin_key(settings)
    app.state.embeddings = load_embeddings(settings.artifact_dir, settings.triton_url)
    install_error_handlers(app)

    # Admission checks, in order, before any route reads the body (see server/middleware.py).
    metrics = app.state.metrics
    checks: list[Check] = [drain.check(metrics), api_key_check(keys), in_flight_check(settings.max_in_flight, metrics),
                           key_limits_check(limiter, metrics, usage_log),
                           body_size_check(settings.max_body_bytes, metrics)]
    app.add_middleware(GatewayMiddleware, checks=checks, metrics=metrics)

    for router in (health.router, models.router, chat.router, completions.router, embeddings.router,
                   tgi.router, tokenize.router, sagemaker.router, lora.router):
        app.include_router(router)
    document_error_statuses(app)
    return app
