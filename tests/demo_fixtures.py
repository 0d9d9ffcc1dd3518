"""Fixtures that need nothing but the engine: shared by the root conftest and by the GPU tests, which
the GPU machine runs alone (`--confcutdir tests/portable_gpu`, without the server's packages)."""
from __future__ import annotations

from pathlib import Path

import pytest

from engines.demo import make_demo_checkpoint


@pytest.fixture(scope="session")
def demo_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {kind: make_demo_checkpoint(kind, root / f"demo-{kind}") for kind in ("llama", "mistral")}
