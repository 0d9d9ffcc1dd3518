"""POST /v1/embeddings."""
from __future__ import annotations

from fastapi import APIRouter, Request

from server.embeddings import no_embedding_model
from server.errors import APIError
from server.protocols.embeddings import EmbeddingRequest, EmbeddingResponse
from server.runner import unless_disconnected

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingResponse:
    service = request.app.state.embeddings
    if service is None:
        raise no_embedding_model(body.model)
    if body.model != service.spec.model_name:
        raise APIError(404, f"The model '{body.model}' does not exist or does not serve embeddings; "
                            f"this server's embedding model is '{service.spec.model_name}'.",
                       "invalid_request_error", "model", "model_not_found")
    return await unless_disconnected(request, service.create(body))
