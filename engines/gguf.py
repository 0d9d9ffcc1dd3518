"""GGUF checkpoints: read llama.cpp's single-file format into a Hugging Face checkpoint directory.

A GGUF file holds the model's hyperparameters and its tokenizer as metadata and its tensors in
llama.cpp's names and (often quantized) types. The engines read Hugging Face checkpoints, so a
GGUF becomes one: `config.json` from the metadata, `tokenizer.json` + `tokenizer_config.json`
(with the chat template) from the embedded tokenizer, and `model.safetensors` with every tensor
dequantized by the `gguf` package. Dequantized values are exact in float32, so that is what the
portable target stores; the engine casts to its own dtype at load time.

llama.cpp's converter permutes the rows of Llama's q and k projections so that rotary pairs are
adjacent (its "normal" rope); Hugging Face's layout rotates the two halves of each head, so the
permutation is undone here, as transformers' own GGUF loader does.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.checkpoint import CheckpointError

ARCHITECTURES = {"llama": "LlamaForCausalLM"}
# Tensor name pieces: llama.cpp → Hugging Face.
GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Tensors llama.cpp writes that change the model's math in ways the engines do not implement.
UNSUPPORTED_TENSORS = {
    "rope_freqs.weight": "per-dimension rope frequencies (Llama 3.1 rope scaling) are not supported",
}
SUPPORTED_ROPE_SCALING = ("none", "linear")


def is_gguf(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix.lower() == ".gguf" or (path.is_file() and _magic(path) == b"GGUF")


def _magic(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(4)


def _reader(path: Path):
    import gguf

    if not path.is_file():
        raise CheckpointError(path, ["file is missing"])
    if _magic(path) != b"GGUF":
        raise CheckpointError(path, [f"{path.name}: not a GGUF file (its first bytes are not 'GGUF')"])
    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, IndexError, OSError) as exc:
        raise CheckpointError(path, [f"{path.name}: cannot read GGUF ({exc})"]) from exc


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


def dequantizable_types() -> set[str]:
    """The GGML tensor types the installed `gguf` package can dequantize (F32 and F16 it does inline;
    every other type is a class in gguf.quants that implements `dequantize_blocks`, or not)."""
    import gguf
    from gguf import quants

    names = {"F32", "F16"}
    for qtype in gguf.GGMLQuantizationType:
        kind = getattr(quants, qtype.name, None)
        if isinstance(kind, type) and "dequantize_blocks" in vars(kind):
            names.add(qtype.name)
    return names


@dataclass
class GGUFInfo:
    """What the metadata says: the Hugging Face config, the tensors' types, the tokenizer's presence."""

    path: Path
    config: dict
    tensor_types: dict[str, str]  # GGUF tensor name → GGML type name
    tensor_shapes: dict[str, tuple[int, ...]]  # GGUF tensor name → Hugging Face (row-major) shape
    has_tokenizer: bool
    chat_template: str | None
    model_name: str | None


def _config_from_metadata(reader, path: Path) -> tuple[dict, list[str]]:
    architecture = _field(reader, "general.architecture")
    if architecture not in ARCHITECTURES:
        return {}, [f"general.architecture is {architecture!r}; supported: {', '.join(ARCHITECTURES)}"]

    def key(name: str, default=None):
        return _field(reader, f"{architecture}.{name}", default)

    problems = []
    required = {"block_count": "num_hidden_layers", "embedding_length": "hidden_size",
                "feed_forward_length": "intermediate_size", "attention.head_count": "num_attention_heads"}
    config: dict = {}
    for gguf_key, hf_key in required.items():
        value = key(gguf_key)
        if not isinstance(value, int) or value <= 0:
            problems.append(f"{architecture}.{gguf_key} must be a positive integer, got {value!r}")
        config[hf_key] = value
    if problems:
        return {}, problems
    heads = config["num_attention_heads"]
    tokens = _field(reader, "tokenizer.ggml.tokens")
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = key("vocab_size") or (len(tokens) if tokens else None) or (int(embed.shape[1]) if embed else None)
    scaling_type = key("rope.scaling.type", "none")
    if scaling_type not in SUPPORTED_ROPE_SCALING:
        problems.append(f"{architecture}.rope.scaling.type is {scaling_type!r}; supported: "
                        f"{', '.join(SUPPORTED_ROPE_SCALING)}")
    config.update({
        "architectures": [ARCHITECTURES[architecture]],
        "model_type": architecture,
        "num_key_value_heads": key("attention.head_count_kv") or heads,
        "head_dim": key("attention.key_length") or key("rope.dimension_count") or config["hidden_size"] // heads,
        "vocab_size": vocab,
        "max_position_embeddings": key("context_length", 4096),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    })
    if scaling_type == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(key("rope.scaling.factor", 1.0))}
    return config, problems


def _hf_name(name: str) -> str | None:
    if name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}"
    return None


def _check_tensors(reader, path: Path) -> list[str]:
    supported, problems = dequantizable_types(), []
    for tensor in reader.tensors:
        if tensor.name in UNSUPPORTED_TENSORS:
            problems.append(f"{path.name}: tensor {tensor.name}: {UNSUPPORTED_TENSORS[tensor.name]}")
        elif _hf_name(tensor.name) is None:
            problems.append(f"{path.name}: tensor {tensor.name} is not part of a Llama model")
        elif tensor.tensor_type.name not in supported:
            problems.append(f"{path.name}: tensor {tensor.name} has type {tensor.tensor_type.name}, which the "
                            f"installed gguf package cannot dequantize (supported: {', '.join(sorted(supported))})")
    return problems


def read_gguf(path: str | Path) -> GGUFInfo:
    """Metadata and tensor types, without dequantizing anything; raises CheckpointError listing every problem."""
    path = Path(path)
    reader = _reader(path)
    config, problems = _config_from_metadata(reader, path)
    problems = [f"{path.name}: {problem}" for problem in problems]
    if not problems:
        problems += _check_tensors(reader, path)
    has_tokenizer = _field(reader, "tokenizer.ggml.model") is not None
    if not has_tokenizer:
        problems.append(f"{path.name}: tokenizer.ggml.model is missing: the file has no embedded tokenizer")
    if problems:
        raise CheckpointError(path, problems)
    return GGUFInfo(
        path=path,
        config=config,
        tensor_types={t.name: t.tensor_type.name for t in reader.tensors},
        tensor_shapes={t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors},
        has_tokenizer=has_tokenizer,
        chat_template=_field(reader, "tokenizer.chat_template"),
        model_name=_field(reader, "general.name"),
    )


def unpermute_rotary(weights: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, interleaved rotary pairs back to two halves."""
    half = weights.shape[0] // heads // 2
    return weights.reshape(heads, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def read_tensors(path: str | Path, config: dict, dtype: str = "float32"):
    """Hugging Face name → torch tensor, dequantized, q/k unpermuted, in `dtype`."""
    import gguf
    import torch

    from engines.portable.loader import torch_dtype

    target = torch_dtype(dtype)
    reader = _reader(Path(path))
    tensors = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        if name is None:
            raise CheckpointError(path, [f"tensor {tensor.name} is not part of a Llama model"])
        try:
            weights = gguf.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise CheckpointError(path, [f"tensor {tensor.name}: type {tensor.tensor_type.name} cannot be "
                                         f"dequantized ({exc})"]) from exc
        if name.endswith("q_proj.weight"):
            weights = unpermute_rotary(weights, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            weights = unpermute_rotary(weights, config["num_key_value_heads"])
        tensors[name] = torch.from_numpy(np.array(weights, dtype=np.float32)).to(target)  # a copy: F32 is a view
    return tensors


def _token_content(tokenizer, attribute: str) -> str | None:
    value = getattr(tokenizer, attribute, None)
    return str(value) if value is not None else None


def write_tokenizer(path: Path, out_dir: Path, chat_template: str | None) -> None:
    """tokenizer.json and tokenizer_config.json from the embedded tokenizer, through transformers' own
    GGUF tokenizer conversion (the one its `from_pretrained(gguf_file=...)` uses)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(getattr(tokenizer, "model_max_length", 0) or 0) or None,
        "clean_up_tokenization_spaces": False,
    }
    for attribute in ("bos_token", "eos_token", "unk_token", "pad_token"):
        config[attribute] = _token_content(tokenizer, attribute)
    if chat_template:
        config["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _write_checkpoint(path: Path, out_dir: Path, dtype: str) -> None:
    from safetensors.torch import save_file

    info = read_gguf(path)
    config = dict(info.config, torch_dtype=dtype)
    tensors = read_tensors(path, config, dtype)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt", "source": path.name})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    write_tokenizer(path, out_dir, info.chat_template)


def convert_gguf(path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write the Hugging Face checkpoint of a GGUF file into `out_dir` (replaced whole, atomically).

    The directory appears only once complete: a crash or a concurrent converter never leaves half a
    checkpoint behind that a later run would take for a finished one.
    """
    path, out_dir = Path(path), Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write_checkpoint(path, staging, dtype)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def validate_gguf(path: str | Path):
    """`ingot validate` for a GGUF file: metadata, every tensor's name, shape and type, the tokenizer."""
    from collections import Counter

    from engines.checkpoint import (CheckpointReport, TokenizerInfo, expected_weights, parameter_count,
                                    parse_model_config)

    info = read_gguf(path)
    config = parse_model_config(info.config, f"{info.path.name} (metadata)")
    shapes = {_hf_name(name): shape for name, shape in info.tensor_shapes.items()}
    problems = []
    for name, shape in expected_weights(config).items():
        if name not in shapes:
            problems.append(f"{info.path.name}: tensor for {name} is missing")
        elif shapes[name] != shape:
            problems.append(f"{info.path.name}: tensor for {name} has shape {list(shapes[name])}, "
                            f"the metadata implies {list(shape)}")
    if problems:
        raise CheckpointError(info.path, problems)
    types = Counter(info.tensor_types.values())
    tokenizer = TokenizerInfo(["embedded in GGUF"], "GGUF tokenizer.chat_template" if info.chat_template else "",
                              bos_token=None, eos_token=None)
    return CheckpointReport(str(info.path), config, parameter_count(config),
                            "GGUF " + ", ".join(f"{name}×{count}" for name, count in types.most_common()),
                            [info.path.name], info.path.stat().st_size, tokenizer)


def convert_gguf_once(path: Path, checkpoints_dir: Path) -> Path:
    """The checkpoint of `path` under `checkpoints_dir`, converted again only when the file changed."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = f"{path}\n{stat.st_size}\n{stat.st_mtime_ns}\n"
    out_dir = Path(checkpoints_dir) / path.stem
    if (out_dir / ".source").is_file() and (out_dir / ".source").read_text() == stamp:
        return out_dir
    convert_gguf(path, out_dir)
    (out_dir / ".source").write_text(stamp)
    return out_dir
