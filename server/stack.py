"""`ingot serve`: the whole stack on one machine — Triton with the portable engine, then the gateway."""
from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from engines.gguf import convert_gguf_once, is_gguf
from engines.manifest import read_manifest
from engines.progress import Reporter
from engines.repository import PortableSettings
from engines.targets.portable import build_portable
from engines.triton.launcher import start_triton
from engines.triton.supervisor import TritonSupervisor

log = logging.getLogger("ingot.serve")
DEMO_API_KEY = "ingot-demo-key"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def prepare_artifact(args, work_dir: Path, reporter: Reporter) -> Path:
    """The artifact to serve: given, or built here from a checkpoint or a demo model."""
    embedding_model = getattr(args, "embedding_model", None)
    if args.artifact:
        manifest = read_manifest(Path(args.artifact))  # fail early with a clear message
        if embedding_model and not manifest.embedding:
            raise ValueError("--embedding-model goes into an artifact when it is built: "
                             "`ingot build ... --embedding-model NAME`")
        return Path(args.artifact)
    if not args.checkpoint and not args.demo:
        from engines.default_model import ensure_default_model

        return ensure_default_model(reporter).artifact
    if args.checkpoint and is_gguf(args.checkpoint):
        name = Path(args.checkpoint).stem
        with reporter.step(f"converting {Path(args.checkpoint).name} to a float32 checkpoint"):
            checkpoint = convert_gguf_once(Path(args.checkpoint), work_dir / "checkpoints")
    elif args.checkpoint:
        checkpoint, name = Path(args.checkpoint), Path(args.checkpoint).name
    else:
        from engines.demo import make_demo_checkpoint

        kind = args.demo
        name = f"demo-{kind}"
        with reporter.step(f"making the demo checkpoint {name}"):
            checkpoint = make_demo_checkpoint(kind, work_dir / "checkpoints" / name)
    artifact = work_dir / "artifacts" / name
    with reporter.step(f"packing the artifact {name}"):
        build_portable(checkpoint, artifact, PortableSettings(), model_name=name)
    if embedding_model:
        from engines.embedding_artifact import add_embedding_model

        with reporter.step(f"adding the embedding model {embedding_model}"):
            add_embedding_model(artifact, embedding_model)
    return artifact


def prepare_loras(args, artifact: Path, work_dir: Path, reporter: Reporter) -> Path:
    """With --lora (or an admin key, for adapters loaded at run time), an overlay of the artifact whose engine
    serves adapters (max_loras) and loads the --lora ones at start (engines/lora_artifact.py)."""
    from engines.lora_artifact import fetch_adapter, lora_overlay
    from server.lora import parse_lora_modules

    adapters = parse_lora_modules(getattr(args, "lora", None) or [])
    admin = os.environ.get("INGOT_ADMIN_KEY") or os.environ.get("INGOT_ADMIN_KEY_FILE") or args.admin_key_file
    max_loras = args.max_loras if args.max_loras is not None else (4 if adapters or admin else 0)
    if not max_loras:
        if adapters:
            raise ValueError("--lora needs --max-loras above 0")
        return artifact
    with reporter.step(f"adapters: {', '.join(adapters) or 'none yet'} (max_loras {max_loras})"):
        local = {name: fetch_adapter(source, work_dir / "loras") for name, source in adapters.items()}
        return lora_overlay(artifact, work_dir / "lora-artifacts" / artifact.name, local, max_loras,
                            args.max_lora_rank)


def check_port_free(host: str, port: int) -> None:
    """Fail in a second, not after minutes of loading, when the gateway's port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror}): another server (an earlier "
                             f"`make serve`?) uses it; stop it or pick another port: make serve PORT={port + 1}"
                             ) from exc


def serve_stack(args) -> int:
    from server.announce import announce_when_listening, announcement, client_url
    from server.cli import gateway_overrides, lora_overrides, run_gateway, tls_overrides
    from server.settings import Settings

    started = time.monotonic()
    reporter = Reporter.for_stream(sys.stderr, emit=log.info)
    host = args.host or os.environ.get("INGOT_HOST", "127.0.0.1")
    port = args.port or int(os.environ.get("INGOT_PORT", Settings.port))
    check_port_free(host, port)
    work_dir = Path(args.work_dir).resolve()
    artifact = prepare_artifact(args, work_dir, reporter)
    artifact = prepare_loras(args, artifact, work_dir, reporter)
    overrides = {}
    if not (os.environ.get("INGOT_API_KEYS") or os.environ.get("INGOT_API_KEYS_FILE")):
        if host not in LOOPBACK:
            raise ValueError("set INGOT_API_KEYS or INGOT_API_KEYS_FILE before serving beyond loopback")
        overrides["api_keys"] = (DEMO_API_KEY,)
        log.warning("no API keys configured: accepting the demo key %r on loopback only", DEMO_API_KEY)
    supervisor = TritonSupervisor(functools.partial(start_triton, artifact / "model_repository", work_dir / "triton"))
    previous = _stop_on_sigterm()
    announced = None
    try:
        log.info("Triton's log: %s", work_dir / "triton" / "tritonserver.log")
        with reporter.stages("Triton") as stage:
            triton = supervisor.start(grpc_port=args.triton_grpc_port, on_stage=stage)
        settings = Settings.from_env(artifact_dir=artifact, triton_url=triton.grpc_url, host=host, port=port,
                                     served_model_name=args.served_model_name, max_model_len=args.max_model_len,
                                     **overrides, **tls_overrides(args), **gateway_overrides(args),
                                     **lora_overrides(args))
        model = settings.served_model_name or read_manifest(artifact).model_name
        base_url = client_url(settings.host, settings.port)
        demo_key = overrides.get("api_keys", (None,))[0]
        log.info("starting the gateway")
        announced = announce_when_listening(
            base_url, lambda: announcement(base_url, demo_key, model, time.monotonic() - started), log.info)
        # The gateway handles SIGTERM/SIGINT while it runs (it drains), then raises the signal again.
        run_gateway(settings)
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        if announced is not None:
            announced.set()
        log.info("stopping Triton")
        supervisor.stop()  # returns once no tritonserver or stub process is left
        signal.signal(signal.SIGTERM, previous)
        log.info("stopped")
    return 0


def _stop_on_sigterm():
    """SIGTERM unwinds like Ctrl-C (before the gateway runs, and when uvicorn raises it again after its
    own shutdown), so Triton is always stopped on the way out."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)
