"""The `trtllm` target: run the plan's conversion and `trtllm-build` inside NVIDIA's TensorRT-LLM container.

Outside that container `tensorrt_llm` is not importable and the target stops after the plan with
`TrtllmUnavailable`. Inside it, each command runs as a subprocess (its output goes to a log file in
the work directory), the engine's config.json is checked against the plan, and the Triton model
repository and manifest are written around the engine.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from engines.checkpoint import CheckpointReport
from engines.manifest import Manifest, tool_versions, write_manifest
from engines.plan import Plan, check_engine_config
from engines.repository import ArtifactPaths, TrtllmSettings, write_trtllm_repository

Runner = Callable[[list[str], Path], None]


class TrtllmUnavailable(RuntimeError):
    pass


class TrtllmBuildError(RuntimeError):
    pass


def tensorrt_llm_available() -> bool:
    return importlib.util.find_spec("tensorrt_llm") is not None


def default_examples_dir() -> str:
    return os.environ.get("TRTLLM_EXAMPLES_DIR", "/app/tensorrt_llm/examples")


def run_logged(command: list[str], log_path: Path) -> None:
    """Run one step; on failure the error carries the command and the end of its log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise TrtllmBuildError(f"`{' '.join(command)}` exited with {result.returncode} (log: {log_path}):\n{tail}")


def check_engine(engine_dir: Path, plan: Plan) -> dict:
    """The engine's config.json, after checking it and the per-rank engine files against the plan."""
    config_path = engine_dir / "config.json"
    if not config_path.is_file():
        raise TrtllmBuildError(f"{config_path}: trtllm-build wrote no config.json")
    engine_config = json.loads(config_path.read_text())
    problems = check_engine_config(engine_config, plan)
    problems += [f"rank{rank}.engine: file is missing" for rank in range(plan.world_size)
                 if not (engine_dir / f"rank{rank}.engine").is_file()]
    if problems:
        raise TrtllmBuildError(f"{config_path}: the engine does not match the plan:\n"
                               + "\n".join(f"  - {p}" for p in problems))
    return engine_config


def build_trtllm(
    report: CheckpointReport,
    plan: Plan,
    artifact_dir: Path,
    work_dir: Path,
    settings: TrtllmSettings,
    model_name: str,
    runner: Runner = run_logged,
    step: Callable[[str], None] = lambda name: None,
) -> Manifest:
    """Convert, compile, check, and write the artifact. `plan`'s commands must point at `work_dir`
    (TensorRT-LLM checkpoint) and at the artifact's model_repository/tensorrt_llm/1 (engine)."""
    if runner is run_logged and not tensorrt_llm_available():
        raise TrtllmUnavailable(
            "tensorrt_llm is not importable here: the trtllm target runs inside NVIDIA's TensorRT-LLM "
            f"container (TensorRT-LLM {plan.trtllm_version}). The plan above lists the exact commands; "
            "run `ingot build` there, or use --target portable."
        )
    artifact_dir, work_dir = Path(artifact_dir), Path(work_dir)
    engine_dir = ArtifactPaths(artifact_dir).model_dir / "1"
    engine_dir.mkdir(parents=True, exist_ok=True)
    step("convert checkpoint")
    runner(plan.convert_command, work_dir / "convert.log")
    step("trtllm-build")
    runner(plan.build_command, work_dir / "build.log")
    step("check engine")
    engine_config = check_engine(engine_dir, plan)
    step("model repository")
    write_trtllm_repository(engine_dir, artifact_dir, Path(report.path), settings)
    versions = tool_versions()
    versions["tensorrt_llm_engine"] = str(engine_config.get("version", "unknown"))
    manifest = Manifest(
        model_name=model_name,
        architecture=report.config.architecture,
        target="trtllm",
        max_model_len=plan.profile["max_seq_len"],
        profile=plan.profile,
        plan={**plan.to_dict(), "engine_parameters": settings.parameters()},
        source={"checkpoint": report.path, "weights_dtype": report.weights_dtype},
        tokenizer=report.tokenizer.to_dict() if report.tokenizer else {},
        tool_versions=versions,
    )
    step("manifest")
    manifest = write_manifest(artifact_dir, manifest)
    shutil.rmtree(work_dir / "tllm_checkpoint", ignore_errors=True)
    return manifest
