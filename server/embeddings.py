"""Serving /v1/embeddings: inputs to token ids, one Triton request each to the `embedding` model, vectors out.

Each input goes to Triton as its own request, all at once, so Triton's dynamic batcher runs the inputs of
this request and those of other clients in the same forward passes.
"""
from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from engines import contract
from engines.embedding import EmbeddingSpec
from engines.manifest import read_manifest
from server.errors import APIError, bad_request
from server.protocols.embeddings import MAX_INPUTS, EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from server.runner import as_api_error
from server.triton_client import classify


class EmbeddingTokenizer:
    """The embedding model's tokenizer: texts, or token arrays of a text, to the ids the model sees."""

    def __init__(self, tokenizer_dir: Path):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        self.vocab_size = len(self._tok)
        self._prefix, self._suffix = self._special_tokens_around()

    def _special_tokens_around(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text's own (e.g. [CLS] … [SEP])."""
        plain = list(self._tok.encode("a", add_special_tokens=False))
        full = list(self._tok.encode("a", add_special_tokens=True))
        start = next(i for i in range(len(full) - len(plain) + 1) if full[i: i + len(plain)] == plain)
        return full[:start], full[start + len(plain):]

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self._tok(texts, add_special_tokens=True)["input_ids"]]

    def with_special_tokens(self, ids: list[int]) -> list[int]:
        """Token arrays are a text's tokens (as OpenAI's); the model's own markers go around them as for text."""
        return self._prefix + list(ids) + self._suffix

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


class EmbeddingService:
    def __init__(self, spec: EmbeddingSpec, tokenizer: EmbeddingTokenizer, triton_url: str):
        self.spec, self.tokenizer, self.triton_url = spec, tokenizer, triton_url
        self._client: grpcclient.InferenceServerClient | None = None

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:  # created lazily: it binds to the running event loop
            self._client = grpcclient.InferenceServerClient(self.triton_url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def token_ids(self, body: EmbeddingRequest) -> list[list[int]]:
        """The request's inputs as the ids the model sees, each checked against the model's limits."""
        items = body.input if isinstance(body.input, list) else [body.input]
        if not items:
            raise bad_request("'input' must not be empty.", "input")
        if all(isinstance(item, int) for item in items):
            items = [items]
        if len(items) > MAX_INPUTS:
            raise bad_request(f"At most {MAX_INPUTS} inputs per request; this one has {len(items)}.", "input")
        if any(len(item) == 0 for item in items):
            raise bad_request("No input may be empty.", "input")
        texts = [(index, item) for index, item in enumerate(items) if isinstance(item, str)]
        ids: list[list[int]] = [[] for _ in items]
        for (index, _), encoded in zip(texts, self.tokenizer.encode_texts([t for _, t in texts]), strict=True):
            ids[index] = encoded
        for index, item in enumerate(items):
            if not isinstance(item, str):
                self._check_vocabulary(index, item)
                ids[index] = self.tokenizer.with_special_tokens(item)
        for index, item_ids in enumerate(ids):
            if len(item_ids) > self.spec.max_input_tokens:
                raise bad_request(
                    f"input[{index}] has {len(item_ids)} tokens, but {self.spec.model_name} takes at most "
                    f"{self.spec.max_input_tokens} (its special tokens included). Shorten or split the input.",
                    "input", "context_length_exceeded")
        return ids

    def _check_vocabulary(self, index: int, ids: list[int]) -> None:
        bad = [t for t in ids if not 0 <= t < self.tokenizer.vocab_size]
        if bad:
            raise bad_request(f"input[{index}] has token ids out of the vocabulary "
                              f"(size {self.tokenizer.vocab_size}): {bad[:5]}", "input")

    def output_dimensions(self, requested: int | None) -> int:
        native, allowed = self.spec.dimensions, self.spec.matryoshka_dimensions
        if requested is None or requested == native:
            return native
        if not allowed:
            raise bad_request(f"{self.spec.model_name} does not support 'dimensions': it was not trained to be "
                              f"shortened (Matryoshka), so its vectors are always {native} long.",
                              "dimensions", "unsupported_parameter")
        if requested not in allowed:
            raise bad_request(f"'dimensions' must be one of {sorted(allowed)} for {self.spec.model_name}.",
                              "dimensions")
        return requested

    async def embed_one(self, ids: list[int]) -> np.ndarray:
        infer_input = grpcclient.InferInput(contract.EMBEDDING_INPUTS[0].name, [1, len(ids)], "INT32")
        infer_input.set_data_from_numpy(np.array([ids], dtype=np.int32))
        output = grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUTS[0].name)
        try:
            result = await self.client.infer(contract.EMBEDDING_MODEL_NAME, [infer_input], outputs=[output])
        except (InferenceServerException, grpc.RpcError) as exc:
            raise as_api_error(classify(exc)) from exc
        return result.as_numpy(contract.EMBEDDING_OUTPUTS[0].name).reshape(-1)

    async def create(self, body: EmbeddingRequest) -> EmbeddingResponse:
        dimensions = self.output_dimensions(body.dimensions)
        ids = self.token_ids(body)
        vectors = await asyncio.gather(*(self.embed_one(item) for item in ids))
        data = [EmbeddingData(index=index, embedding=encode(self._shorten(vector, dimensions), body.encoding_format))
                for index, vector in enumerate(vectors)]
        tokens = sum(len(item) for item in ids)
        return EmbeddingResponse(data=data, model=self.spec.model_name,
                                 usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))

    def _shorten(self, vector: np.ndarray, dimensions: int) -> np.ndarray:
        """Matryoshka: the leading dimensions, normalised again when the model's vectors are unit length."""
        if dimensions == vector.size:
            return vector
        vector = vector[:dimensions]
        return vector / max(float(np.linalg.norm(vector)), 1e-12) if self.spec.normalize else vector


def encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32, as OpenAI's clients decode it
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def load_embeddings(artifact_dir: Path, triton_url: str) -> EmbeddingService | None:
    """The service when the artifact carries an embedding model (`ingot build --embedding-model`), else None."""
    manifest = read_manifest(artifact_dir)
    if not manifest.embedding:
        return None
    spec = EmbeddingSpec.from_dict(manifest.embedding)
    return EmbeddingService(spec, EmbeddingTokenizer(Path(artifact_dir) / spec.tokenizer_dir), triton_url)


def no_embedding_model(requested: str) -> APIError:
    return APIError(404, f"The model '{requested}' does not exist: this server serves no embedding model "
                         "(add one with `ingot build --embedding-model`).", "invalid_request_error", "model",
                    "model_not_found")
