"""The served model's context: the artifact's, which the gateway may lower (INGOT_MAX_MODEL_LEN) but never raise."""
from __future__ import annotations

import pytest

from server.app import load_model
from server.settings import Settings


@pytest.mark.parametrize("requested,served", [(None, 512), (100, 100), (100_000, 512)])
def test_max_model_len_is_a_cap(demo_artifact, requested, served):
    model, _ = load_model(Settings(artifact_dir=demo_artifact, max_model_len=requested))
    assert model.max_model_len == served  # the demo model's artifact serves 512 tokens
