"""GET /v1/models and /v1/models/{id}."""
from __future__ import annotations

from fastapi import APIRouter, Request

from server.errors import APIError
from server.protocol import ModelCard, ModelList

router = APIRouter()


def _cards(request: Request) -> list[ModelCard]:
    model, embeddings = request.app.state.model, request.app.state.embeddings
    cards = [ModelCard(id=model.name, created=model.created, max_model_len=model.max_model_len)]
    if embeddings is not None:
        spec = embeddings.spec
        cards.append(ModelCard(id=spec.model_name, created=model.created, max_model_len=spec.max_input_tokens))
    for adapter in request.app.state.adapters.list():
        cards.append(ModelCard(id=adapter.name, created=adapter.created, max_model_len=model.max_model_len,
                               root=adapter.name, parent=model.name))
    return cards


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    return ModelList(data=_cards(request))


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> ModelCard:
    for card in _cards(request):
        if model_id == card.id:
            return card
    raise APIError(404, f"The model '{model_id}' does not exist.", "invalid_request_error", "model",
                   "model_not_found")
