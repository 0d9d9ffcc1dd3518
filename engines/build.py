"""`ingot build`: checkpoint → validate → plan → target → model repository → manifest → S3.

Each step shows on a rich progress display when stderr is a terminal and as plain lines otherwise
(with S3 transfers in bytes and rate, see engines/progress.py); the plan prints as a table (and as JSON
with --json or --dry-run).
"""
from __future__ import annotations

import json
import shlex
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from engines import artifacts
from engines.checkpoint import CheckpointError, CheckpointReport, has_weights, validate_checkpoint
from engines.embedding import EmbeddingModelError
from engines.embedding_artifact import add_embedding_model
from engines.gguf import convert_gguf, is_gguf
from engines.plan import BuildPaths, Plan, PlanError, gb, make_plan
from engines.progress import Reporter
from engines.profiles import BuildProfile, ProfileError, get_profile
from engines.repository import ArtifactPaths, PortableSettings, TrtllmSettings
from engines.targets.portable import build_portable
from engines.targets.trtllm import TrtllmUnavailable, build_trtllm, default_examples_dir

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_NO_TRTLLM = 0, 1, 2, 3
TARGETS = ("trtllm", "portable")
INPUT_ERRORS = (CheckpointError, ProfileError, PlanError, EmbeddingModelError)


@dataclass
class BuildOptions:
    checkpoint: str
    profile: str
    target: str = "trtllm"
    out: str | None = None
    dry_run: bool = False
    json_output: bool = False
    model_name: str | None = None
    tp_size: int | None = None
    pp_size: int | None = None
    quantization: str | None = None
    dtype: str | None = None
    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_num_tokens: int | None = None
    kv_cache_free_gpu_mem_fraction: float | None = None
    max_beam_width: int | None = None
    gather_context_logits: bool | None = None
    gather_generation_logits: bool | None = None
    work_dir: str | None = None
    examples_dir: str | None = None
    engine_path: str | None = None  # gpt_model_path as the Triton container sees it
    endpoint_url: str | None = None
    embedding_model: str | None = None  # a sentence-transformers folder or a bundled name, for /v1/embeddings
    max_loras: int | None = None  # LoRA: adapters in the device cache at once (engines/lora_plan.py)
    max_lora_rank: int | None = None
    lora_target_modules: list[str] | None = None


class Steps:
    """The build's steps: a rich progress display on a terminal, a line at each step's start and end otherwise."""

    def __init__(self, console: Console):
        self.console, self.live = console, console.is_terminal
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=console, disable=not self.live, transient=False)
        self.reporter = Reporter(console)
        self.task, self.name, self.started = None, "", 0.0

    def __call__(self, name: str) -> None:
        self._finish("done")
        self.task, self.name, self.started = self.progress.add_task(name, total=None), name, time.monotonic()
        if not self.live:
            self.console.print(f"{name} ...", markup=False)

    def _finish(self, outcome: str) -> None:
        if self.task is None:
            return
        self.progress.update(self.task, completed=1, total=1)
        if not self.live:
            self.console.print(f"{self.name}: {outcome} in {time.monotonic() - self.started:.1f}s", markup=False)
        self.task = None

    @contextmanager
    def paused(self):
        """Stop the live display while another one (a transfer's bar) runs: rich shows one at a time."""
        self.progress.stop()
        try:
            yield self.reporter
        finally:
            self.progress.start()

    def close(self, outcome: str) -> None:
        self._finish(outcome)
        self.progress.stop()


@contextmanager
def progress_steps(console: Console):
    steps = Steps(console)
    steps.progress.start()
    outcome = "failed"
    try:
        yield steps
        outcome = "done"
    finally:
        steps.close(outcome)


def resolve_profile(options: BuildOptions, report: CheckpointReport) -> BuildProfile:
    """The named profile with the command line's overrides; lengths default to what the model allows."""
    base = get_profile(options.profile, tp_size=options.tp_size, pp_size=options.pp_size,
                       quantization=options.quantization, dtype=options.dtype,
                       max_batch_size=options.max_batch_size, max_num_tokens=options.max_num_tokens,
                       kv_cache_free_gpu_mem_fraction=options.kv_cache_free_gpu_mem_fraction,
                       max_beam_width=options.max_beam_width, gather_context_logits=options.gather_context_logits,
                       gather_generation_logits=options.gather_generation_logits,
                       max_loras=options.max_loras, max_lora_rank=options.max_lora_rank,
                       lora_target_modules=tuple(options.lora_target_modules or ()) or None)
    limit = report.config.max_position_embeddings
    max_seq_len = options.max_seq_len or min(base.max_seq_len, limit)
    max_input_len = options.max_input_len or min(base.max_input_len, max_seq_len)
    return base.with_overrides(max_seq_len=max_seq_len, max_input_len=max_input_len)


def render_plan(plan: Plan, console: Console) -> None:
    chosen, profile, model = plan.chosen, plan.profile, plan.model
    table = Table(title=f"Build plan: {model['name']} on {profile['name']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("architecture", f"{model['architecture']}, {plan.parameters / 1e9:.2f}B parameters"),
        ("GPUs", f"{profile['gpus_per_node']} × {profile['gpu']['name']} ({profile['instance_type']})"),
        ("dtype / quantization", f"{profile['dtype']} / {profile['quantization']}"),
        ("tensor × pipeline parallel", f"TP={chosen.tp_size} × PP={chosen.pp_size}"),
        ("weights per GPU", gb(chosen.weight_bytes_per_gpu)),
        ("runtime + activation reserve", gb(chosen.reserve_bytes_per_gpu)),
        (f"KV budget ({profile['kv_cache_free_gpu_mem_fraction']} of the rest)", gb(chosen.kv_budget_bytes_per_gpu)),
        ("KV bytes per token", f"{plan.kv_bytes_per_token:,} (model), {chosen.kv_bytes_per_token_per_gpu:,} per GPU"),
        ("KV cache capacity", f"{chosen.max_kv_tokens:,} tokens"),
        (f"sequences of {profile['max_seq_len']} tokens", str(chosen.max_concurrent_sequences)),
        ("engine limits", f"max_batch_size {profile['max_batch_size']}, max_input_len {profile['max_input_len']}, "
                          f"max_seq_len {profile['max_seq_len']}, max_num_tokens {profile['max_num_tokens']}"),
    ]
    if plan.lora:
        lora = plan.lora
        rows.append(("LoRA", f"{lora['max_loras']} adapters of rank ≤ {lora['max_lora_rank']} on "
                             f"{' '.join(lora['target_modules'])}: {gb(lora['adapter_bytes_per_gpu'])} each per GPU, "
                             f"device cache {gb(lora['device_cache_bytes'])} = lora_cache_gpu_memory_fraction "
                             f"{lora['lora_cache_gpu_memory_fraction']} of the {gb(lora['left_after_kv_cache_bytes'])} "
                             "left after the KV cache"))
    for candidate in plan.candidates:
        rows.append((f"tp={candidate.tp_size}", ("fits: " if candidate.fits else "no: ") + candidate.reason))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}")
    console.print(f"TensorRT-LLM {plan.trtllm_version} commands:")
    console.print("  " + shlex.join(plan.convert_command), soft_wrap=True, markup=False)
    console.print("  " + shlex.join(plan.build_command), soft_wrap=True, markup=False)


def _local_checkpoint(options: BuildOptions, scratch: Path, steps) -> Path:
    if not artifacts.is_s3_url(options.checkpoint):
        return Path(options.checkpoint).resolve()
    steps("download checkpoint")
    local = scratch / "checkpoint"
    with steps.paused() as reporter:
        artifacts.download_prefix(options.checkpoint, local, client=artifacts.s3_client(options.endpoint_url),
                                  reporter=reporter)
    return local


def run_build(options: BuildOptions, console: Console, stdout: Console) -> int:
    """Run the whole build; returns the process exit code and prints what the user must fix."""
    if options.target not in TARGETS:
        console.print(f"error: --target must be one of {', '.join(TARGETS)}")
        return EXIT_INVALID
    if not options.dry_run and not options.out:
        console.print("error: --out DIR|s3://… is required unless --dry-run")
        return EXIT_INVALID
    scratch = Path(tempfile.mkdtemp(prefix="ingot-build-"))
    try:
        with progress_steps(console) as steps:
            return _build(options, console, stdout, scratch, steps)
    except INPUT_ERRORS as exc:
        console.print(f"error: {exc}", markup=False)
        return EXIT_INVALID
    except TrtllmUnavailable as exc:
        console.print(f"stopped after the plan: {exc}", markup=False)
        return EXIT_NO_TRTLLM
    except (OSError, RuntimeError, ValueError) as exc:
        console.print(f"error: {exc}", markup=False)
        return EXIT_FAILED
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build(options: BuildOptions, console: Console, stdout: Console, scratch: Path, steps) -> int:
    checkpoint = _local_checkpoint(options, scratch, steps)
    steps("validate checkpoint")
    config_only = options.dry_run and checkpoint.is_dir() and not has_weights(checkpoint)
    report = validate_checkpoint(checkpoint, config_only=config_only)
    model_name = options.model_name or (checkpoint.stem if is_gguf(checkpoint) else checkpoint.name)
    profile = resolve_profile(options, report)

    staging = scratch / "artifact" if artifacts.is_s3_url(options.out or "") else None
    artifact_dir = staging or Path(options.out or "<out>")
    # The TensorRT-LLM checkpoint is as large as the model: keep it beside the artifact, not in /tmp.
    work_dir = Path(options.work_dir) if options.work_dir else artifact_dir.parent / f"{artifact_dir.name}.work"
    # Both targets read Hugging Face checkpoints: a GGUF file is converted into one first.
    hf_checkpoint = work_dir / "hf_checkpoint" if is_gguf(checkpoint) else checkpoint
    paths = BuildPaths(
        checkpoint_dir=str(hf_checkpoint),
        trtllm_checkpoint_dir=str(work_dir / "tllm_checkpoint"),
        engine_dir=str(ArtifactPaths(artifact_dir).model_dir / "1"),
        examples_dir=options.examples_dir or default_examples_dir(),
    )
    steps("plan")
    plan = make_plan(report.config, profile, paths, model_name)
    if config_only:
        plan.notes.append("no weights in the checkpoint directory: validated config.json only")
    steps.progress.stop()
    render_plan(plan, console)
    if options.json_output or options.dry_run:
        stdout.print_json(json.dumps(plan.to_dict()))
    if options.dry_run:
        return EXIT_OK
    steps.progress.start()

    if hf_checkpoint != checkpoint:
        steps("convert GGUF to a Hugging Face checkpoint")
        checkpoint = convert_gguf(checkpoint, hf_checkpoint)
    if options.target == "portable":
        steps("portable repository")
        settings = PortableSettings(max_batch_size=profile.max_batch_size)
        build_portable(checkpoint, artifact_dir, settings, model_name, profile=profile.to_dict(),
                       plan={"trtllm_plan": plan.to_dict()},
                       tokenizer=report.tokenizer.to_dict() if report.tokenizer else {})
    else:
        settings = TrtllmSettings(max_batch_size=profile.max_batch_size, max_beam_width=profile.max_beam_width,
                                  kv_cache_free_gpu_mem_fraction=profile.kv_cache_free_gpu_mem_fraction,
                                  lora_cache=plan.lora,
                                  **({"gpt_model_path": options.engine_path} if options.engine_path else {}))
        build_trtllm(report, plan, artifact_dir, work_dir, settings, model_name, step=steps)
    if options.embedding_model:
        steps("embedding model")
        add_embedding_model(artifact_dir, options.embedding_model)
    if staging is not None:
        steps(f"upload to {options.out}")
        with steps.paused() as reporter:
            artifacts.upload_artifact(staging, options.out, client=artifacts.s3_client(options.endpoint_url),
                                      reporter=reporter)
    console.print(f"built {options.target} artifact: {options.out}", markup=False)
    return EXIT_OK
