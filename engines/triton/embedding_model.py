"""Triton Python-backend model `embedding`: token ids in, one sentence vector out, per request.

Not decoupled: Triton's dynamic batcher hands `execute` the requests of many clients at once, and they
run as one padded forward pass. A bad request fails alone; the others of its batch still get answers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from engines import contract
from engines.embedding import Embedder, EmbeddingSpec
from engines.triton.engine_settings import resolve_device


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        model_dir = Path(args["model_repository"]) / args["model_version"] / parameters.get("model_dir", "model")
        self.spec = EmbeddingSpec.from_dict(json.loads(parameters["spec"]))
        device = resolve_device(parameters.get("device", "auto"))
        self.embedder = Embedder(model_dir, self.spec, device)
        pb_utils.Logger.log_info(f"embedding model ready: {self.spec.model_name} on {device}")

    def execute(self, requests):
        batch, responses = [], [None] * len(requests)
        for index, request in enumerate(requests):
            ids = pb_utils.get_input_tensor_by_name(request, contract.EMBEDDING_INPUTS[0].name).as_numpy()
            ids = [int(t) for t in ids.reshape(-1)]
            problem = self._check(ids)
            if problem:
                responses[index] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"invalid request: {problem}"))
            else:
                batch.append((index, ids))
        if batch:
            vectors = self.embedder.embed([ids for _, ids in batch])
            name = contract.EMBEDDING_OUTPUTS[0].name
            for (index, _), vector in zip(batch, vectors, strict=True):
                tensor = pb_utils.Tensor(name, np.ascontiguousarray(vector[None], dtype=np.float32))
                responses[index] = pb_utils.InferenceResponse(output_tensors=[tensor])
        return responses

    def _check(self, ids: list[int]) -> str | None:
        if not ids:
            return "empty input"
        if len(ids) > self.spec.max_input_tokens:
            return f"{len(ids)} tokens, more than the model's {self.spec.max_input_tokens}"
        vocab = self.embedder.model.config.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            return f"token ids out of the vocabulary (size {vocab})"
        return None
