"""Validate a Hugging Face Llama/Mistral checkpoint without loading its weights.

Only `config.json`, the safetensors index and each shard's header are read: a safetensors file
starts with an 8-byte little-endian length, then that many bytes of JSON naming every tensor's
dtype, shape and offsets. That is enough to prove every weight the architecture needs is present
with the right shape and one dtype, before an hour of conversion finds out the hard way.
"""
from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
INDEX_NAME = "model.safetensors.index.json"
FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
MAX_HEADER_BYTES = 100 << 20  # the safetensors format's own limit


class CheckpointError(ValueError):
    """A checkpoint that cannot be built; every problem names the file and the field or tensor."""

    def __init__(self, source: Path | str, problems: list[str]):
        self.source, self.problems = str(source), list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{source}: checkpoint is not valid:\n{lines}")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture numbers the plan needs, read from config.json."""

    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    torch_dtype: str = "float16"
    sliding_window: int | None = None
    rope_theta: float = 10000.0

    def to_dict(self) -> dict:
        return asdict(self)


REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                   "max_position_embeddings")


def parse_model_config(data: dict, source: str = "config.json") -> ModelConfig:
    """ModelConfig from a config.json dictionary; raises CheckpointError naming each bad field."""
    problems = []
    architectures = data.get("architectures") or []
    if not architectures:
        problems.append(f"{source}: field 'architectures' is missing")
    elif architectures[0] not in SUPPORTED_ARCHITECTURES:
        problems.append(f"{source}: field 'architectures' is {architectures[0]!r}; supported: "
                        f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    for name in REQUIRED_FIELDS:
        value = data.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"{source}: field {name!r} must be a positive integer, got {value!r}")
    if problems:
        raise CheckpointError(source, problems)
    heads = data["num_attention_heads"]
    kv_heads = data.get("num_key_value_heads") or heads
    head_dim = data.get("head_dim") or data["hidden_size"] // heads
    if data["hidden_size"] % heads and not data.get("head_dim"):
        problems.append(f"{source}: field 'hidden_size' {data['hidden_size']} is not divisible by "
                        f"'num_attention_heads' {heads}")
    if heads % kv_heads:
        problems.append(f"{source}: field 'num_key_value_heads' {kv_heads} does not divide "
                        f"'num_attention_heads' {heads}")
    # transformers 5 writes `dtype` and keeps rope settings under `rope_parameters`; 4.x wrote
    # `torch_dtype` and a top-level `rope_theta`. Read both.
    dtype = data.get("dtype") or data.get("torch_dtype") or "float16"
    rope = data.get("rope_parameters") if isinstance(data.get("rope_parameters"), dict) else {}
    if dtype not in FLOAT_DTYPES.values():
        field_name = "dtype" if data.get("dtype") else "torch_dtype"
        problems.append(f"{source}: field {field_name!r} is {dtype!r}; expected one of "
                        f"{sorted(FLOAT_DTYPES.values())}")
    if problems:
        raise CheckpointError(source, problems)
    return ModelConfig(
        architecture=architectures[0],
        hidden_size=data["hidden_size"],
        intermediate_size=data["intermediate_size"],
        num_layers=data["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=data["vocab_size"],
        max_position_embeddings=data["max_position_embeddings"],
        tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
        attention_bias=bool(data.get("attention_bias", False)),
        mlp_bias=bool(data.get("mlp_bias", False)),
        torch_dtype=dtype,
        sliding_window=data.get("sliding_window"),
        rope_theta=float(data.get("rope_theta") or rope.get("rope_theta") or 10000.0),
    )


def load_model_config(path: Path) -> ModelConfig:
    """Read a config.json file, or the config.json of a checkpoint directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise CheckpointError(path.parent, [f"{path.name}: file is missing"])
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(path.parent, [f"{path.name}: not valid JSON ({exc})"]) from exc
    return parse_model_config(data, str(path))


def expected_weights(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor a Hugging Face checkpoint of this architecture holds."""
    hidden, inter = config.hidden_size, config.intermediate_size
    q_out, kv_out = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, hidden)}
    for layer in range(config.num_layers):
        prefix = f"model.layers.{layer}"
        shapes.update({
            f"{prefix}.input_layernorm.weight": (hidden,),
            f"{prefix}.post_attention_layernorm.weight": (hidden,),
            f"{prefix}.self_attn.q_proj.weight": (q_out, hidden),
            f"{prefix}.self_attn.k_proj.weight": (kv_out, hidden),
            f"{prefix}.self_attn.v_proj.weight": (kv_out, hidden),
            f"{prefix}.self_attn.o_proj.weight": (hidden, q_out),
            f"{prefix}.mlp.gate_proj.weight": (inter, hidden),
            f"{prefix}.mlp.up_proj.weight": (inter, hidden),
            f"{prefix}.mlp.down_proj.weight": (hidden, inter),
        })
        if config.attention_bias:
            shapes.update({
                f"{prefix}.self_attn.q_proj.bias": (q_out,),
                f"{prefix}.self_attn.k_proj.bias": (kv_out,),
                f"{prefix}.self_attn.v_proj.bias": (kv_out,),
                f"{prefix}.self_attn.o_proj.bias": (hidden,),
            })
        if config.mlp_bias:
            shapes.update({
                f"{prefix}.mlp.gate_proj.bias": (inter,),
                f"{prefix}.mlp.up_proj.bias": (inter,),
                f"{prefix}.mlp.down_proj.bias": (hidden,),
            })
    shapes["model.norm.weight"] = (hidden,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, hidden)
    return shapes


def parameter_count(config: ModelConfig) -> int:
    total = 0
    for shape in expected_weights(config).values():
        count = 1
        for dim in shape:
            count *= dim
        total += count
    return total


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """Tensor name → {dtype, shape, data_offsets}, from the header alone (a few KB of a multi-GB file)."""
    path = Path(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise CheckpointError(path.parent, [f"{path.name}: too short to be a safetensors file"])
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise CheckpointError(path.parent, [f"{path.name}: header length {length} is not plausible"])
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(path.parent, [f"{path.name}: header is not valid JSON ({exc})"]) from exc
    header.pop("__metadata__", None)
    return header


@dataclass
class TokenizerInfo:
    files: list[str]
    chat_template: str  # where it was found: "tokenizer_config.json", "chat_template.jinja", ...
    bos_token: str | None = None
    eos_token: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckpointReport:
    """What validation found: the config, the weights' dtype and files, the tokenizer."""

    path: str
    config: ModelConfig
    parameters: int
    weights_dtype: str | None  # None: config-only (no weights present)
    weight_files: list[str] = field(default_factory=list)
    weight_bytes: int = 0
    tokenizer: TokenizerInfo | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        return data


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised as a dict
        return value.get("content")
    return value


def check_tokenizer(directory: Path) -> tuple[TokenizerInfo | None, list[str]]:
    problems = []
    names = [name for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                               "special_tokens_map.json", "generation_config.json", "chat_template.jinja")
             if (directory / name).is_file()]
    if "tokenizer.json" not in names and "tokenizer.model" not in names:
        problems.append("tokenizer.json: file is missing (and no tokenizer.model either); the gateway tokenizes")
    config: dict = {}
    if "tokenizer_config.json" not in names:
        problems.append("tokenizer_config.json: file is missing")
    else:
        try:
            config = json.loads((directory / "tokenizer_config.json").read_text())
        except json.JSONDecodeError as exc:
            problems.append(f"tokenizer_config.json: not valid JSON ({exc})")
    if config.get("chat_template"):
        template_source = "tokenizer_config.json"
    elif (directory / "chat_template.jinja").is_file():
        template_source = "chat_template.jinja"
    elif (directory / "chat_template.json").is_file():
        template_source = "chat_template.json"
        names.append("chat_template.json")
    else:
        template_source = ""
        problems.append("tokenizer_config.json: field 'chat_template' is missing (and no chat_template.jinja); "
                        "/v1/chat/completions needs it")
    if problems:
        return None, problems
    info = TokenizerInfo(names, template_source, _token_text(config.get("bos_token")),
                         _token_text(config.get("eos_token")))
    return info, []


def _weight_locations(directory: Path) -> tuple[dict[str, str], list[str]]:
    """Tensor name → shard file, from the index when there is one, else from the single file."""
    index_path = directory / INDEX_NAME
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text()).get("weight_map")
        except json.JSONDecodeError as exc:
            return {}, [f"{INDEX_NAME}: not valid JSON ({exc})"]
        if not isinstance(weight_map, dict) or not weight_map:
            return {}, [f"{INDEX_NAME}: field 'weight_map' is missing or empty"]
        return weight_map, []
    shards = sorted(p.name for p in directory.glob("*.safetensors"))
    if len(shards) > 1:
        return {}, [f"{INDEX_NAME}: file is missing but there are {len(shards)} safetensors shards"]
    if not shards:
        return {}, []
    return {name: shards[0] for name in read_safetensors_header(directory / shards[0])}, []


def check_weights(directory: Path, config: ModelConfig) -> tuple[str | None, list[str], int, list[str]]:
    """(dtype, shard files, bytes, problems) from the index and each shard's header."""
    locations, problems = _weight_locations(directory)
    if problems or not locations:
        return None, [], 0, problems
    shards = sorted(set(locations.values()))
    headers: dict[str, dict] = {}
    for shard in shards:
        if not (directory / shard).is_file():
            problems.append(f"{shard}: file is missing (named by {INDEX_NAME})")
            continue
        try:
            headers[shard] = read_safetensors_header(directory / shard)
        except CheckpointError as exc:
            problems.extend(exc.problems)
    dtypes: dict[str, str] = {}
    for name, shape in expected_weights(config).items():
        shard = locations.get(name)
        if shard is None:
            where = INDEX_NAME if (directory / INDEX_NAME).is_file() else shards[0]
            problems.append(f"{where}: tensor {name} is missing")
            continue
        if shard not in headers:
            continue
        entry = headers[shard].get(name)
        if entry is None:
            problems.append(f"{shard}: tensor {name} is missing (the index says it is here)")
            continue
        if tuple(entry.get("shape", ())) != shape:
            problems.append(f"{shard}: tensor {name} has shape {list(entry.get('shape', ()))}, "
                            f"config.json implies {list(shape)}")
        dtypes.setdefault(entry.get("dtype", "?"), name)
    unsupported = [d for d in dtypes if d not in FLOAT_DTYPES]
    if unsupported:
        problems.extend(f"{locations[dtypes[d]]}: tensor {dtypes[d]} has dtype {d}; expected F16, BF16 or F32"
                        for d in unsupported)
    elif len(dtypes) > 1:
        examples = ", ".join(f"{name} is {dtype}" for dtype, name in dtypes.items())
        problems.append(f"weights mix dtypes ({examples}); convert them to one dtype first")
    size = sum((directory / s).stat().st_size for s in shards if (directory / s).is_file())
    dtype = FLOAT_DTYPES.get(next(iter(dtypes), ""), None) if len(dtypes) == 1 else None
    return dtype, shards, size, problems


def has_weights(directory: Path) -> bool:
    return (directory / INDEX_NAME).is_file() or any(Path(directory).glob("*.safetensors"))


def validate_checkpoint(directory: Path, config_only: bool = False) -> CheckpointReport:
    """Validate config, weights (headers only) and tokenizer; raise CheckpointError listing all problems.

    `config_only` checks config.json alone: enough to plan a published model without its weights.
    """
    directory = Path(directory)
    if directory.is_file() and directory.suffix.lower() == ".gguf":
        from engines.gguf import validate_gguf

        return validate_gguf(directory)
    if not directory.is_dir():
        raise CheckpointError(directory, ["not a directory (nor a .gguf file)"])
    config = load_model_config(directory)
    if config_only:
        return CheckpointReport(str(directory), config, parameter_count(config), None)
    problems: list[str] = []
    if not has_weights(directory):
        problems.append("model.safetensors: file is missing (and no model.safetensors.index.json); "
                        "only safetensors checkpoints are supported")
        dtype, shards, size = None, [], 0
    else:
        dtype, shards, size, weight_problems = check_weights(directory, config)
        problems.extend(weight_problems)
    tokenizer, tokenizer_problems = check_tokenizer(directory)
    problems.extend(tokenizer_problems)
    if problems:
        raise CheckpointError(directory, problems)
    return CheckpointReport(str(directory), config, parameter_count(config), dtype, shards, size, tokenizer)
