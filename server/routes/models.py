"""GET /v1/models and /v1/models/{id}."""
from __future__ import annotations

from fastapi import APIRouter, Request

from server.errors import APIError
from server.protocol import ModelCard, ModelList

router = APIRouter()


def _card(request: Request) -> ModelCard:
    model = request.app.state.model
    return ModelCard(id=model.name, created=model.created, max_model_len=model.max_model_len)


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_card(request)])


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> ModelCard:
    card = _card(request)
    if model_id != card.id:
        raise APIError(404, f"The model '{model_id}' does not exist.", "invalid_request_error", "model",
                       "model_not_found")
    return card
