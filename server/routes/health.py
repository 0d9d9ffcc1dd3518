"""Liveness and readiness; open routes, no API key."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.drain import shutting_down
from server.errors import error_response, unavailable
from server.metrics import exposition

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request):
    if request.app.state.drain.draining:
        return error_response(shutting_down())
    if await request.app.state.engine.is_ready():
        return JSONResponse({"status": "ready", "model": request.app.state.model.name})
    # Open route: says nothing about where the engine lives (the address is in the gateway's log at start).
    return error_response(unavailable("The model is not ready to serve yet."))


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body, media_type = exposition(request.app.state.metrics.registry)
    return Response(body, media_type=media_type)
