"""What the served engine can return, read from the artifact's manifest, and the 400 for a request that needs
more than that.

The portable engine returns logits rows and runs any number of beams. A TensorRT-LLM engine returns only what
it was built with (`ingot build --gather-context-logits / --gather-generation-logits / --max-beam-width`,
recorded in the manifest's profile): without the gather flags the backend sends a 1×1 placeholder instead of
logits rows, and TensorRT-LLM 0.12 fails every request whose beam width differs from the engine's
max_beam_width. So the gateway refuses such requests itself, before any engine is asked, saying what to rebuild.
"""
from __future__ import annotations

from dataclasses import dataclass

from engines import contract
from server.errors import bad_request

@dataclass(frozen=True)
class EngineFeatures:
    context_logits: bool = True
    generation_logits: bool = True
    beam_width: int | None = None  # None: any (portable); else the one width every request must use

    @classmethod
    def of_manifest(cls, manifest) -> "EngineFeatures":
        if manifest.target != "trtllm":
            return cls()
        profile = manifest.profile or {}
        return cls(bool(profile.get("gather_context_logits", False)),
                   bool(profile.get("gather_generation_logits", False)), int(profile.get("max_beam_width", 1)))


def check_request(request: contract.GenerationRequest, features: EngineFeatures) -> None:
    """A 400 naming what the request needs and how to build an engine that has it."""
    if request.return_context_logits and not features.context_logits:
        raise _refused("returns no prompt logits, which prompt logprobs need (echo with logprobs; TGI's "
                       "decoder_input_details)", "--gather-context-logits")
    if request.return_generation_logits and not features.generation_logits:
        raise _refused("returns no generation logits, which top logprobs need (chat top_logprobs, completions "
                       "logprobs above 0; TGI's top_n_tokens)", "--gather-generation-logits")
    width = features.beam_width
    if width is None or request.beam_width == width:
        return
    if width == 1:
        raise _refused("was built without beam search (max_beam_width 1), which use_beam_search and num_beams "
                       "need", f"--max-beam-width {request.beam_width}")
    raise bad_request(
        f"The served TensorRT-LLM engine was built for beam search with {width} beams, and TensorRT-LLM 0.12 runs "
        f"every request of such an engine with exactly {width} beams: ask for beam search with {width} beams "
        f"(use_beam_search with n or best_of {width}, or num_beams {width}), or serve an engine built with "
        "--max-beam-width 1 for other requests.", None, "unsupported_by_engine")


def _refused(what: str, flag: str):
    return bad_request(f"The served TensorRT-LLM engine {what}: rebuild it with `ingot build ... {flag}`.", None,
                       "unsupported_by_engine")
