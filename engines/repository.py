"""Triton model repositories whose `tensorrt_llm` model honours the contract.

An artifact directory is what the build writes and what S3 stores:

    <artifact>/manifest.json                      what was built, from what, with sha256 of every file
    <artifact>/tokenizer/                         the gateway's tokenizer and chat template
    <artifact>/model_repository/tensorrt_llm/     the Triton model (config.pbtxt + version 1)

`tritonserver --model-repository <artifact>/model_repository` serves it; the gateway reads
`manifest.json` and `tokenizer/`.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from engines import contract

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "chat_template.jinja",
)
PORTABLE_MODEL_SHIM = '''"""Triton Python-backend entry point: the portable engine serving the contract."""
from engines.triton.portable_model import TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class ArtifactPaths:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def model_repository(self) -> Path:
        return self.root / "model_repository"

    @property
    def model_dir(self) -> Path:
        return self.model_repository / contract.MODEL_NAME


def _tensor_block(spec: contract.TensorSpec, is_input: bool) -> str:
    lines = [
        "  {",
        f'    name: "{spec.name}"',
        f"    data_type: TYPE_{spec.dtype}",
        f"    dims: [ {', '.join(str(d) for d in spec.dims)} ]",
    ]
    if is_input and spec.scalar:
        lines.append("    reshape: { shape: [ ] }")
    if is_input and spec.optional:
        lines.append("    optional: true")
    if is_input and spec.ragged:
        lines.append("    allow_ragged_batch: true")
    lines.append("  }")
    return "\n".join(lines)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def supports_guided_decoding(trtllm_version: str) -> bool:
    """Whether tensorrtllm_backend of that release takes the guided-decoding inputs (from v0.19.0)."""
    since = contract.INPUT_SPECS["guided_decoding_guide"].trtllm_since
    return _version(trtllm_version) >= _version(since)


def render_config_pbtxt(
    backend: str,
    parameters: dict[str, str],
    max_batch_size: int = 64,
    instance_kind: str = "KIND_CPU",
    max_queue_delay_microseconds: int = 0,
    trtllm_version: str | None = None,
) -> str:
    """config.pbtxt of the `tensorrt_llm` model: the contract's tensors plus engine parameters.
    With `trtllm_version`, only the inputs that release of tensorrtllm_backend knows."""
    specs = [spec for spec in contract.INPUTS if trtllm_version is None or spec.trtllm_since is None
             or _version(trtllm_version) >= _version(spec.trtllm_since)]
    inputs = ",\n".join(_tensor_block(spec, True) for spec in specs)
    outputs = ",\n".join(_tensor_block(spec, False) for spec in contract.OUTPUTS)
    params = "\n".join(
        f"parameters: {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(str(value))} }}\n}}"
        for key, value in parameters.items()
    )
    return (
        f'name: "{contract.MODEL_NAME}"\n'
        f'backend: "{backend}"\n'
        f"max_batch_size: {max_batch_size}\n\n"
        "model_transaction_policy {\n  decoupled: true\n}\n\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {max_batch_size} ]\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_microseconds}\n"
        "}\n\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        f"instance_group [\n  {{\n    count: 1\n    kind: {instance_kind}\n  }}\n]\n"
        f"{params}\n"
    )


def parse_config_pbtxt(text: str):
    """Parse with Triton's own ModelConfig protobuf; raises on anything Triton would reject as text."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def copy_tokenizer(checkpoint_dir: Path, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        source = checkpoint_dir / name
        if source.is_file():
            shutil.copy2(source, out_dir / name)
            copied.append(name)
    if "tokenizer.json" not in copied and "tokenizer.model" not in copied:
        raise FileNotFoundError(f"{checkpoint_dir}: no tokenizer.json or tokenizer.model to copy")
    return copied


@dataclass(frozen=True)
class PortableSettings:
    """Engine parameters of the portable `tensorrt_llm` model (strings in config.pbtxt)."""

    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda and on CPUs with native bfloat16, else float32
    block_size: int = 16
    kv_cache_memory_bytes: int | None = None  # None: what the GPU has free on CUDA, one full context on CPU
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    max_batch_size: int = 64
    # how often cancelled requests are found and the gauges refreshed (TensorRT-LLM's parameter of that name)
    cancellation_check_period_ms: int = 100
    cpu_threads: int | None = None  # None: torch's default, one per core (engines/triton/engine_settings.py)
    # bfloat16 on the CPU: int8/int4 copies of the projections for decode steps (engines/portable/cpu_weights.py);
    # "dense" turns them off
    cpu_weights: str = "auto"
    # threads of the CPU's small (decode) steps; 0: as many as every other step (engines/portable/cpu_threads.py)
    cpu_small_step_threads: int = 1
    # LoRA: adapters on the device at once (0: none served), their largest rank, and the host cache of
    # adapters sent with requests (TensorRT-LLM's lora_cache_host_memory_bytes)
    max_loras: int = 0
    max_lora_rank: int = 16
    lora_cache_host_memory_bytes: int = 1 << 30
    response_sender_threads: int = 1  # threads sending the model's responses (engines/triton/responses.py)
    # the stub's sys.setswitchinterval: how long a thread holding the GIL keeps it while another waits
    # (engines/triton/engine_settings.py); None: Python's own (5 ms). 0.5 ms lets the engine thread back in
    # sooner when the sender thread holds the GIL (benchmarks/results/stack_vs_engine_h100_gil/NOTE.md)
    gil_switch_interval_us: int | None = 500
    # the engine in a process of its own instead of the stub's interpreter (engines/triton/engine_process.py):
    # "auto" is its own process on CUDA, the stub on CPU; "true" / "false" force either
    engine_process: str = "auto"

    def parameters(self) -> dict[str, str]:
        return {
            "engine": "portable",
            "checkpoint_dir": "checkpoint",
            "device": self.device,
            "dtype": self.dtype,
            "block_size": str(self.block_size),
            "kv_cache_memory_bytes": "auto" if self.kv_cache_memory_bytes is None else str(self.kv_cache_memory_bytes),
            "max_num_seqs": str(self.max_num_seqs),
            "max_num_batched_tokens": str(self.max_num_batched_tokens),
            "enable_kv_cache_reuse": "true" if self.enable_prefix_caching else "false",
            "exclude_input_in_output": "true",
            "cancellation_check_period_ms": str(self.cancellation_check_period_ms),
            "cpu_threads": "auto" if self.cpu_threads is None else str(self.cpu_threads),
            "cpu_weights": self.cpu_weights,
            "cpu_small_step_threads": str(self.cpu_small_step_threads),
            "max_loras": str(self.max_loras),
            "max_lora_rank": str(self.max_lora_rank),
            "lora_cache_host_memory_bytes": str(self.lora_cache_host_memory_bytes),
            "lora_dir": "loras",
            "response_sender_threads": str(self.response_sender_threads),
            "gil_switch_interval_us": "auto" if self.gil_switch_interval_us is None
            else str(self.gil_switch_interval_us),
            "engine_process": self.engine_process,
        }


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (weights are never modified in place), else a copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_portable_repository(checkpoint_dir: Path, artifact_dir: Path, settings: PortableSettings,
                              loras: dict[str, Path] | None = None) -> dict[str, dict]:
    """Model repository for the portable engine: the Python backend plus the checkpoint's weights, and the
    LoRA adapters `loras` (name -> PEFT folder) loaded at start. Returns the packed adapters (manifest's `loras`)."""
    checkpoint_dir, paths = Path(checkpoint_dir), ArtifactPaths(Path(artifact_dir))
    version_dir = paths.model_dir / "1"
    weights_dir = version_dir / "checkpoint"
    weights_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted(checkpoint_dir.iterdir()):
        if source.suffix in (".safetensors", ".json") and source.is_file():
            _link_or_copy(source, weights_dir / source.name)
    (version_dir / "model.py").write_text(PORTABLE_MODEL_SHIM)
    config = render_config_pbtxt("python", settings.parameters(), max_batch_size=settings.max_batch_size)
    parse_config_pbtxt(config)
    (paths.model_dir / "config.pbtxt").write_text(config)
    copy_tokenizer(checkpoint_dir, paths.tokenizer)
    if loras and not settings.max_loras:
        raise ValueError("LoRA adapters given but max_loras is 0: the engine would serve none of them")
    from engines.lora_artifact import pack_adapters

    return pack_adapters(loras or {}, version_dir / "loras")


@dataclass(frozen=True)
class TrtllmSettings:
    """Parameters of the `tensorrt_llm` model served by NVIDIA's TensorRT-LLM backend.

    `gpt_model_path` is where the engine lies inside the Triton container: the artifact's
    model_repository/tensorrt_llm/1 as the deployment mounts it.
    """

    gpt_model_path: str = "/models/model_repository/tensorrt_llm/1"
    max_batch_size: int = 64
    max_beam_width: int = 1
    kv_cache_free_gpu_mem_fraction: float = 0.9
    batch_scheduler_policy: str = "max_utilization"  # or guaranteed_no_evict
    enable_chunked_context: bool = True
    enable_kv_cache_reuse: bool = True
    cancellation_check_period_ms: int = 100
    normalize_log_probs: bool = True
    max_queue_delay_microseconds: int = 0
    trtllm_version: str = "0.12.0"  # engines.plan.TRTLLM_VERSION, the release the plan's commands are for
    # Where the backend finds xgrammar's tokenizer info for guided decoding (releases from 0.19.0 on).
    xgrammar_tokenizer_info_path: str = "/models/model_repository/tensorrt_llm/1/xgrammar_tokenizer_info.json"
    lora_cache: dict = field(default_factory=dict)  # the plan's LoRA cache (engines/lora_plan.py); empty: no LoRA

    def parameters(self) -> dict[str, str]:
        def flag(value: bool) -> str:
            return "true" if value else "false"

        guided = {}
        if supports_guided_decoding(self.trtllm_version):
            guided = {"guided_decoding_backend": "xgrammar",
                      "xgrammar_tokenizer_info_path": self.xgrammar_tokenizer_info_path}
        from engines.lora_plan import backend_parameters

        return {**guided, **backend_parameters(self.lora_cache),
            "gpt_model_type": "inflight_fused_batching",
            "gpt_model_path": self.gpt_model_path,
            "batch_scheduler_policy": self.batch_scheduler_policy,
            "kv_cache_free_gpu_mem_fraction": str(self.kv_cache_free_gpu_mem_fraction),
            "enable_chunked_context": flag(self.enable_chunked_context),
            "enable_kv_cache_reuse": flag(self.enable_kv_cache_reuse),
            "exclude_input_in_output": "true",
            "max_beam_width": str(self.max_beam_width),
            "cancellation_check_period_ms": str(self.cancellation_check_period_ms),
            "normalize_log_probs": flag(self.normalize_log_probs),
            # An engine of k > 1 beams runs beam search on every request (TensorRT-LLM 0.12).
            "decoding_mode": "top_k_top_p" if self.max_beam_width == 1 else "beam_search",
        }


def write_trtllm_repository(engine_dir: Path, artifact_dir: Path, checkpoint_dir: Path,
                            settings: TrtllmSettings) -> ArtifactPaths:
    """Model repository for the TensorRT-LLM backend: config.pbtxt beside the engine in version 1.

    `engine_dir` must already be (or be copied to) model_repository/tensorrt_llm/1; the backend
    itself runs the GPUs, so the instance group is KIND_CPU as in NVIDIA's own template.
    """
    paths = ArtifactPaths(Path(artifact_dir))
    version_dir = paths.model_dir / "1"
    engine_dir = Path(engine_dir)
    if engine_dir.resolve() != version_dir.resolve():
        shutil.copytree(engine_dir, version_dir, dirs_exist_ok=True)
    config = render_config_pbtxt(
        "tensorrtllm", settings.parameters(), max_batch_size=settings.max_batch_size,
        max_queue_delay_microseconds=settings.max_queue_delay_microseconds, trtllm_version=settings.trtllm_version,
    )
    parse_config_pbtxt(config)
    (paths.model_dir / "config.pbtxt").write_text(config)
    copy_tokenizer(Path(checkpoint_dir), paths.tokenizer)
    return paths
