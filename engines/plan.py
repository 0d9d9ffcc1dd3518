"""The build plan: does the model fit the profile's GPUs, at which tensor-parallel size, with how much
KV cache, and the exact TensorRT-LLM commands that build it.

Memory per GPU, in the order TensorRT-LLM's runtime takes it:
  weights      linear layers / (TP × PP), embedding and lm_head / TP (vocab-parallel), norms / PP
  reserve      runtime_reserve_bytes + activations for max_num_tokens + fp32 logits of the batch's beams
               (+ fp32 logits of every context token of a step with gather_context_logits)
  KV budget    kv_cache_free_gpu_mem_fraction × (GPU memory − weights − reserve)
KV bytes per token per GPU = 2 (K and V) × layers/PP × ceil(kv_heads/TP) × head_dim × bytes per element.
The smallest power-of-two TP that leaves room for `min_concurrent_sequences` full-length requests (each
of max_beam_width sequences) wins.

Commands are those of TensorRT-LLM v0.12 (also accepted by later 0.x releases):
examples/llama/convert_checkpoint.py (covers Mistral), examples/quantization/quantize.py (AWQ, FP8),
then `trtllm-build`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from engines import lora_plan
from engines.checkpoint import ModelConfig
from engines.profiles import BuildProfile

TRTLLM_VERSION = "0.12.0"
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
# Bytes per weight of the quantized linear layers; AWQ adds one fp16 scale per group of 128 weights.
LINEAR_WEIGHT_BYTES = {
    "int8_weight_only": 1.0,
    "int4_weight_only": 0.5,
    "int4_awq": 0.5 + 2 / 128,
    "smoothquant": 1.0,
    "fp8": 1.0,
}
AWQ_BLOCK_SIZE = 128
CALIB_SIZE = 512
SMOOTHQUANT_ALPHA = 0.5
# quant_algo that the built engine's config.json reports for each mode.
QUANT_ALGO = {
    "none": None,
    "int8_weight_only": "W8A16",
    "int4_weight_only": "W4A16",
    "int4_awq": "W4A16_AWQ",
    "smoothquant": "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
    "fp8": "FP8",
}


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class BuildPaths:
    """Where the commands read and write; inside the TensorRT-LLM container for a real build."""

    checkpoint_dir: str
    trtllm_checkpoint_dir: str
    engine_dir: str
    examples_dir: str = "/app/tensorrt_llm/examples"


@dataclass
class Candidate:
    """One tensor-parallel size considered, with its numbers per GPU."""

    tp_size: int
    pp_size: int
    weight_bytes_per_gpu: int
    reserve_bytes_per_gpu: int
    kv_budget_bytes_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    max_kv_tokens: int
    max_concurrent_sequences: int
    fits: bool
    reason: str


@dataclass
class Plan:
    model: dict
    profile: dict
    parameters: int
    kv_bytes_per_token: int  # whole model, all layers and KV heads
    chosen: Candidate
    candidates: list[Candidate]
    convert_command: list[str]
    build_command: list[str]
    trtllm_version: str = TRTLLM_VERSION
    notes: list[str] = field(default_factory=list)
    lora: dict = field(default_factory=dict)  # engines.lora_plan.lora_cache of the chosen candidate; empty without

    @property
    def tp_size(self) -> int:
        return self.chosen.tp_size

    @property
    def pp_size(self) -> int:
        return self.chosen.pp_size

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    def to_dict(self) -> dict:
        return asdict(self)


def _linear_params(config: ModelConfig) -> int:
    hidden, inter = config.hidden_size, config.intermediate_size
    q_out, kv_out = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    per_layer = hidden * q_out * 2 + hidden * kv_out * 2 + hidden * inter * 3
    return per_layer * config.num_layers


def _other_layer_params(config: ModelConfig) -> int:
    """Norms and biases of the decoder layers plus the final norm: kept in the activation dtype."""
    q_out, kv_out = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    per_layer = 2 * config.hidden_size
    if config.attention_bias:
        per_layer += q_out + 2 * kv_out + config.hidden_size
    if config.mlp_bias:
        per_layer += 2 * config.intermediate_size + config.hidden_size
    return per_layer * config.num_layers + config.hidden_size


def uses_quantize_script(profile: BuildProfile) -> bool:
    return profile.quantization in ("int4_awq", "fp8")


def kv_cache_bytes_per_element(profile: BuildProfile) -> int:
    return 1 if profile.quantization == "fp8" else DTYPE_BYTES[profile.dtype]  # FP8 builds quantize KV too


def kv_bytes_per_token(config: ModelConfig, profile: BuildProfile, tp: int = 1, pp: int = 1) -> int:
    layers = math.ceil(config.num_layers / pp)
    kv_heads = math.ceil(config.num_kv_heads / tp)  # TP > kv_heads replicates a KV head per GPU
    return 2 * layers * kv_heads * config.head_dim * kv_cache_bytes_per_element(profile)


def weight_bytes_per_gpu(config: ModelConfig, profile: BuildProfile, tp: int, pp: int = 1) -> int:
    dtype_bytes = DTYPE_BYTES[profile.dtype]
    linear_bytes = LINEAR_WEIGHT_BYTES.get(profile.quantization, dtype_bytes)
    embedding = config.vocab_size * config.hidden_size
    # convert_checkpoint.py gets --use_parallel_embedding; quantize.py keeps the embedding whole.
    embedding_split = 1 if uses_quantize_script(profile) else tp
    embed_bytes = embedding * dtype_bytes / embedding_split
    head_bytes = 0 if config.tie_word_embeddings else embedding * dtype_bytes / tp
    # With PP the embedding sits on the first stage, lm_head on the last: the fullest stage counts.
    vocab_bytes = embed_bytes + head_bytes if pp == 1 else max(embed_bytes, head_bytes)
    total = (_linear_params(config) * linear_bytes / (tp * pp)
             + _other_layer_params(config) * dtype_bytes / pp
             + vocab_bytes)
    return int(math.ceil(total))


def reserve_bytes_per_gpu(config: ModelConfig, profile: BuildProfile, tp: int) -> int:
    """Runtime overhead plus peak activations of a max_num_tokens step and the step's fp32 logits: one row per
    beam of the batch, and with gather_context_logits one per context token of the step too."""
    act_bytes = DTYPE_BYTES[profile.dtype]
    activations = profile.max_num_tokens * (4 * config.hidden_size + 2 * config.intermediate_size // tp) * act_bytes
    rows = profile.max_batch_size * profile.max_beam_width
    if profile.gather_context_logits:
        rows += profile.max_num_tokens
    logits = rows * math.ceil(config.vocab_size / tp) * 4
    lora = lora_plan.workspace_bytes(config, profile) if profile.max_loras else 0
    return profile.runtime_reserve_bytes + activations + logits + lora


def tp_candidates(config: ModelConfig, profile: BuildProfile) -> list[int]:
    """Powers of two up to the node's GPUs that split the attention heads and KV heads evenly."""
    if profile.tp_size is not None:
        sizes = [profile.tp_size]
    else:
        sizes = [2**i for i in range(8) if 2**i * profile.pp_size <= profile.gpus_per_node]
    return [tp for tp in sizes if config.num_heads % tp == 0
            and (config.num_kv_heads % tp == 0 or tp % config.num_kv_heads == 0)]


def evaluate(config: ModelConfig, profile: BuildProfile, tp: int) -> Candidate:
    pp = profile.pp_size
    weights = weight_bytes_per_gpu(config, profile, tp, pp)
    reserve = reserve_bytes_per_gpu(config, profile, tp)
    free = profile.gpu.memory_bytes - weights - reserve
    per_token = kv_bytes_per_token(config, profile, tp, pp)
    budget = int(max(free, 0) * profile.kv_cache_free_gpu_mem_fraction)
    tokens = budget // per_token
    sequences = tokens // (profile.max_seq_len * profile.max_beam_width)  # requests, each with its beams
    if free <= 0:
        fits, reason = False, (f"weights {gb(weights)} + reserve {gb(reserve)} exceed "
                               f"{gb(profile.gpu.memory_bytes)} per GPU")
    elif sequences < profile.min_concurrent_sequences:
        fits, reason = False, (f"KV cache of {gb(budget)} holds {tokens} tokens = {sequences} sequences of "
                               f"{profile.max_seq_len}{_beams(profile)}, fewer than {profile.min_concurrent_sequences}")
    else:
        fits, reason = True, f"{sequences} sequences of {profile.max_seq_len} tokens{_beams(profile)} fit the KV cache"
    if fits and profile.max_loras:
        lora = lora_plan.lora_cache(config, profile, tp, pp, free, budget)
        if not lora["fits"]:
            need, left = gb(lora["device_cache_bytes"]), gb(lora["left_after_kv_cache_bytes"])
            fits, reason = False, (f"the LoRA cache for {profile.max_loras} adapters of rank {profile.max_lora_rank} "
                                   f"({need}) exceeds the {left} left after the KV cache; lower "
                                   "kv_cache_free_gpu_mem_fraction or max_loras")
    return Candidate(tp, pp, weights, reserve, budget, per_token, tokens, sequences, fits, reason)


def _beams(profile: BuildProfile) -> str:
    return f" × {profile.max_beam_width} beams" if profile.max_beam_width > 1 else ""


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def make_plan(config: ModelConfig, profile: BuildProfile, paths: BuildPaths, model_name: str = "model") -> Plan:
    """Choose the smallest TP that fits and write the commands; raise PlanError with the numbers if none does."""
    profile.validate()
    if profile.max_seq_len > config.max_position_embeddings:
        raise PlanError(f"max_seq_len {profile.max_seq_len} exceeds the model's max_position_embeddings "
                        f"{config.max_position_embeddings} (config.json); pass --max-seq-len "
                        f"{config.max_position_embeddings} or less")
    sizes = tp_candidates(config, profile)
    if not sizes:
        raise PlanError(f"tp_size {profile.tp_size} does not divide {config.num_heads} attention heads and "
                        f"{config.num_kv_heads} KV heads evenly")
    candidates = []
    for tp in sizes:
        candidates.append(evaluate(config, profile, tp))
        if candidates[-1].fits:
            break
    chosen = candidates[-1]
    if not chosen.fits:
        rows = "\n".join(f"  tp={c.tp_size} pp={c.pp_size}: {c.reason}" for c in candidates)
        raise PlanError(f"{model_name} ({config.architecture}, {config_parameters_b(config)}) does not fit "
                        f"profile {profile.name} ({profile.gpus_per_node} × {profile.gpu.name}, "
                        f"quantization {profile.quantization}) at any tensor-parallel size tried:\n{rows}\n"
                        "Try quantization (int8_weight_only, int4_awq), a shorter --max-seq-len, "
                        "or a larger GPU profile.")
    notes = []
    if chosen.tp_size > 1 and profile.tp_size is None:
        smaller = ", ".join(f"tp={c.tp_size} ({c.reason})" for c in candidates[:-1])
        notes.append(f"needs TP={chosen.tp_size}: {smaller}")
    if chosen.tp_size > config.num_kv_heads:
        notes.append(f"TP={chosen.tp_size} > {config.num_kv_heads} KV heads: each GPU holds a replicated KV head")
    notes += feature_notes(profile)
    return Plan(
        model={"name": model_name, **config.to_dict()},
        profile=profile.to_dict(),
        parameters=_total_params(config),
        kv_bytes_per_token=kv_bytes_per_token(config, profile),
        chosen=chosen,
        candidates=candidates,
        convert_command=convert_command(profile, paths, chosen.tp_size, chosen.pp_size),
        build_command=build_command(profile, paths, chosen.tp_size, chosen.pp_size),
        notes=notes,
        lora=_lora_of(config, profile, chosen),
    )


def _lora_of(config: ModelConfig, profile: BuildProfile, chosen: Candidate) -> dict:
    if not profile.max_loras:
        return {}
    free = profile.gpu.memory_bytes - chosen.weight_bytes_per_gpu - chosen.reserve_bytes_per_gpu
    return lora_plan.lora_cache(config, profile, chosen.tp_size, chosen.pp_size, free, chosen.kv_budget_bytes_per_gpu)


def _total_params(config: ModelConfig) -> int:
    vocab = config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2)
    return _linear_params(config) + _other_layer_params(config) + vocab


def config_parameters_b(config: ModelConfig) -> str:
    return f"{_total_params(config) / 1e9:.2f}B parameters"


def convert_command(profile: BuildProfile, paths: BuildPaths, tp: int, pp: int) -> list[str]:
    """Hugging Face checkpoint → TensorRT-LLM checkpoint, one shard per rank."""
    common = ["--model_dir", paths.checkpoint_dir, "--output_dir", paths.trtllm_checkpoint_dir,
              "--dtype", profile.dtype, "--tp_size", str(tp), "--pp_size", str(pp)]
    if uses_quantize_script(profile):
        qformat = {"int4_awq": "int4_awq", "fp8": "fp8"}[profile.quantization]
        command = ["python3", f"{paths.examples_dir}/quantization/quantize.py", *common,
                   "--qformat", qformat, "--calib_size", str(CALIB_SIZE)]
        if profile.quantization == "int4_awq":
            command += ["--awq_block_size", str(AWQ_BLOCK_SIZE)]
        if profile.quantization == "fp8":
            command += ["--kv_cache_dtype", "fp8"]
        return command
    command = ["python3", f"{paths.examples_dir}/llama/convert_checkpoint.py", *common,
               "--workers", str(tp * pp)]
    if tp > 1:
        command.append("--use_parallel_embedding")
    if profile.quantization == "int8_weight_only":
        command += ["--use_weight_only", "--weight_only_precision", "int8"]
    elif profile.quantization == "int4_weight_only":
        command += ["--use_weight_only", "--weight_only_precision", "int4"]
    elif profile.quantization == "smoothquant":
        command += ["--smoothquant", str(SMOOTHQUANT_ALPHA), "--per_token", "--per_channel"]
    return command


def build_command(profile: BuildProfile, paths: BuildPaths, tp: int, pp: int) -> list[str]:
    """TensorRT-LLM checkpoint → one engine per rank, with the in-flight-batching features the backend needs."""
    # FP8 GEMMs come from TensorRT itself; "auto" lets trtllm-build pick per layer.
    gemm = "auto" if profile.quantization == "fp8" else profile.dtype
    command = [
        "trtllm-build",
        "--checkpoint_dir", paths.trtllm_checkpoint_dir,
        "--output_dir", paths.engine_dir,
        "--gpt_attention_plugin", profile.dtype,
        "--gemm_plugin", gemm,
        "--context_fmha", "enable",
        "--paged_kv_cache", "enable",
        "--remove_input_padding", "enable",
        "--use_paged_context_fmha", "enable",  # needed by chunked context and KV-cache reuse
        "--use_fused_mlp", "enable",
        "--multiple_profiles", "enable",
        "--max_batch_size", str(profile.max_batch_size),
        "--max_input_len", str(profile.max_input_len),
        "--max_seq_len", str(profile.max_seq_len),
        "--max_num_tokens", str(profile.max_num_tokens),
        "--max_beam_width", str(profile.max_beam_width),
        "--workers", str(tp * pp),
    ]
    if profile.quantization == "fp8":
        command += ["--use_fp8_context_fmha", "enable"]
    if profile.gather_context_logits:  # prompt logprobs (echo, decoder_input_details) need the context's rows
        command.append("--gather_context_logits")
    if profile.gather_generation_logits:  # top logprobs (top_logprobs, top_n_tokens) need each new token's row
        command.append("--gather_generation_logits")
    return command + lora_plan.build_flags(profile)


def feature_notes(profile: BuildProfile) -> list[str]:
    """What the served engine will and will not answer, so the plan says it before a build."""
    notes = []
    if profile.max_beam_width > 1:
        notes.append(f"max_beam_width {profile.max_beam_width}: TensorRT-LLM {TRTLLM_VERSION} runs every request of "
                     f"this engine with exactly {profile.max_beam_width} beams, so it serves beam search only "
                     "(the gateway refuses other requests with a 400)")
    if not profile.gather_context_logits:
        notes.append("no --gather-context-logits: the gateway answers 400 to prompt logprobs (echo with logprobs, "
                     "TGI decoder_input_details)")
    if not profile.gather_generation_logits:
        notes.append("no --gather-generation-logits: the gateway answers 400 to top logprobs (chat top_logprobs, "
                     "completions logprobs > 0, TGI top_n_tokens)")
    return notes


def check_engine_config(engine_config: dict, plan: Plan) -> list[str]:
    """Differences between a built engine's config.json and the plan; empty when they agree."""
    problems = []
    build = engine_config.get("build_config", {})
    pretrained = engine_config.get("pretrained_config", {})
    profile = plan.profile
    for key in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens"):
        if build.get(key) != profile[key]:
            problems.append(f"build_config.{key} is {build.get(key)!r}, the plan says {profile[key]!r}")
    mapping = pretrained.get("mapping", {})
    for key, expected in (("tp_size", plan.tp_size), ("pp_size", plan.pp_size)):
        if mapping.get(key) != expected:
            problems.append(f"pretrained_config.mapping.{key} is {mapping.get(key)!r}, the plan says {expected}")
    if pretrained.get("dtype") != profile["dtype"]:
        problems.append(f"pretrained_config.dtype is {pretrained.get('dtype')!r}, the plan says {profile['dtype']!r}")
    if pretrained.get("architecture") != plan.model["architecture"]:
        problems.append(f"pretrained_config.architecture is {pretrained.get('architecture')!r}, "
                        f"the checkpoint is {plan.model['architecture']!r}")
    quant_algo = (pretrained.get("quantization") or {}).get("quant_algo")
    expected_algo = QUANT_ALGO[profile["quantization"]]
    if quant_algo != expected_algo:
        problems.append(f"pretrained_config.quantization.quant_algo is {quant_algo!r}, the plan says {expected_algo!r}")
    plugins = build.get("plugin_config", {})
    paged = plugins.get("paged_kv_cache") is True or str(build.get("kv_cache_type", "")).upper() == "PAGED"
    if not paged:
        problems.append("the engine was built without a paged KV cache; in-flight batching needs it")
    for key in ("remove_input_padding", "use_paged_context_fmha"):
        if plugins.get(key) is not True:
            problems.append(f"build_config.plugin_config.{key} is {plugins.get(key)!r}, the plan enables it")
    # Absent keys read as TensorRT-LLM's defaults (1 beam, no logits gathered).
    features = (("max_beam_width", build.get("max_beam_width", 1), profile.get("max_beam_width", 1)),
                ("gather_context_logits", bool(build.get("gather_context_logits", False)),
                 profile.get("gather_context_logits", False)),
                ("gather_generation_logits", bool(build.get("gather_generation_logits", False)),
                 profile.get("gather_generation_logits", False)))
    problems += [f"build_config.{key} is {built!r}, the plan says {planned!r}"
                 for key, built, planned in features if built != planned]
    return problems + lora_plan.check_engine(engine_config, plan.lora)
