"""`ingot serve`: the whole stack on one machine — Triton with the portable engine, then the gateway."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from engines.manifest import read_manifest
from engines.repository import PortableSettings
from engines.targets.portable import build_portable
from engines.triton.launcher import start_triton

log = logging.getLogger("ingot.serve")
DEMO_API_KEY = "ingot-demo-key"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def prepare_artifact(args, work_dir: Path) -> Path:
    """The artifact to serve: given, or built here from a checkpoint or a demo model."""
    if args.artifact:
        read_manifest(Path(args.artifact))  # fail early with a clear message
        return Path(args.artifact)
    if args.checkpoint:
        checkpoint, name = Path(args.checkpoint), Path(args.checkpoint).name
    else:
        from engines.demo import make_demo_checkpoint

        kind = args.demo or "llama"
        name = f"demo-{kind}"
        checkpoint = make_demo_checkpoint(kind, work_dir / "checkpoints" / name)
    artifact = work_dir / "artifacts" / name
    build_portable(checkpoint, artifact, PortableSettings(), model_name=name)
    return artifact


def serve_stack(args) -> int:
    from server.cli import run_gateway
    from server.settings import Settings

    started = time.monotonic()
    work_dir = Path(args.work_dir).resolve()
    artifact = prepare_artifact(args, work_dir)
    host = args.host or os.environ.get("INGOT_HOST", "127.0.0.1")
    overrides = {}
    if not (os.environ.get("INGOT_API_KEYS") or os.environ.get("INGOT_API_KEYS_FILE")):
        if host not in LOOPBACK:
            raise ValueError("set INGOT_API_KEYS or INGOT_API_KEYS_FILE before serving beyond loopback")
        overrides["api_keys"] = (DEMO_API_KEY,)
        log.warning("no API keys configured: accepting the demo key %r on loopback only", DEMO_API_KEY)
    triton = start_triton(artifact / "model_repository", work_dir / "triton", grpc_port=args.triton_grpc_port)
    try:
        log.info("starting Triton (log: %s)", triton.log_path)
        triton.wait_ready()
        settings = Settings.from_env(artifact_dir=artifact, triton_url=triton.grpc_url, host=host, port=args.port,
                                     served_model_name=args.served_model_name, max_model_len=args.max_model_len,
                                     **overrides)
        log.info("Triton ready in %.1fs; gateway on http://%s:%d/v1", time.monotonic() - started,
                 settings.host, settings.port)
        run_gateway(settings)
    finally:
        triton.stop()
    return 0
