"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's routes and bodies), for the admin key only.

The admin key comes from INGOT_ADMIN_KEY or a file (--admin-key-file / INGOT_ADMIN_KEY_FILE, first line); a user's
API key is refused with 403, no key or a wrong one with 401. Without an admin key configured the routes answer 403.
A loaded adapter is converted here and reaches the engine with its first request (server/lora.py).
"""
from __future__ import annotations

import asyncio
import hmac
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from engines.lora_format import LoraError
from server.errors import APIError, bad_request

router = APIRouter()


class LoadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_path: str


class UnloadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_int_id: int | None = None  # vLLM's body has it; adapters are named here


def admin_key(settings) -> str | None:
    if settings.admin_key:
        return settings.admin_key
    if settings.admin_key_file is not None:
        lines = Path(settings.admin_key_file).read_text().split()
        return lines[0] if lines else None
    return None


def require_admin(request: Request) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "Missing admin key: send 'Authorization: Bearer <admin key>'.", "authentication_error",
                       code="missing_api_key")
    expected = request.app.state.admin_key
    if expected is None:
        raise APIError(403, "Loading LoRA adapters at run time is disabled: start the gateway with INGOT_ADMIN_KEY "
                            "or --admin-key-file.", "permission_error", code="admin_disabled")
    if hmac.compare_digest(token.encode(), expected.encode()):
        return
    if request.app.state.keys.identify(token) is not None:
        raise APIError(403, "This API key may not load or unload adapters: use the admin key.", "permission_error",
                       code="not_admin")
    raise APIError(401, "Incorrect admin key provided.", "authentication_error", code="invalid_api_key")


def require_one_worker(request: Request) -> None:
    """Adapters loaded here live in this gateway process only: with several workers, the others would not
    know them, and the same name would answer or 404 depending on the worker a request lands on."""
    from server.workers import default_workers

    workers = request.app.state.settings.workers or default_workers()
    if workers > 1:
        raise APIError(400, f"This gateway runs {workers} worker processes and adapters loaded at run time would "
                            "reach only one of them: start it with --workers 1, or serve adapters from the start "
                            "with --lora NAME=PATH.", "invalid_request_error", code="unsupported_with_workers")


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(body: LoadLoraAdapterRequest, request: Request) -> PlainTextResponse:
    require_admin(request)
    require_one_worker(request)
    from engines.lora_artifact import fetch_adapter

    adapters = request.app.state.adapters
    try:
        path = await asyncio.to_thread(fetch_adapter, body.lora_path, Path(tempfile.gettempdir()) / "ingot-loras")
        await asyncio.to_thread(adapters.load, body.lora_name, path)
    except LoraError as exc:
        raise bad_request(str(exc), "lora_path" if "already been loaded" not in str(exc) else "lora_name") from None
    except Exception as exc:  # an S3 prefix that cannot be read
        raise bad_request(f"cannot read the adapter at {body.lora_path}: {exc}", "lora_path") from None
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(body: UnloadLoraAdapterRequest, request: Request) -> PlainTextResponse:
    require_admin(request)
    require_one_worker(request)
    try:
        request.app.state.adapters.unload(body.lora_name)
    except KeyError:
        raise APIError(404, f"The lora adapter '{body.lora_name}' cannot be found.", "not_found_error",
                       "lora_name", "lora_adapter_not_found") from None
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
