"""Gateway settings from INGOT_* variables and flags: the HTTP keep-alive of client connections."""
from __future__ import annotations

import argparse

import pytest

from server.cli import _gateway_args, gateway_overrides
from server.settings import Settings


def test_http_keepalive_defaults_above_load_balancer_idle_timeouts(tmp_path):
    env = {"INGOT_ARTIFACT_DIR": str(tmp_path)}
    assert Settings.from_env(env).http_keepalive_s == 75.0
    assert Settings.from_env({**env, "INGOT_HTTP_KEEPALIVE": "120"}).http_keepalive_s == 120
    with pytest.raises(ValueError, match="INGOT_HTTP_KEEPALIVE"):
        Settings.from_env({**env, "INGOT_HTTP_KEEPALIVE": "-1"})
    with pytest.raises(ValueError, match="http-keepalive"):
        Settings(artifact_dir=tmp_path, http_keepalive_s=-1)


def test_the_http_keepalive_flag_wins_over_the_environment(tmp_path):
    parser = argparse.ArgumentParser()
    _gateway_args(parser)
    args = parser.parse_args(["--http-keepalive", "90"])
    settings = Settings.from_env({"INGOT_ARTIFACT_DIR": str(tmp_path), "INGOT_HTTP_KEEPALIVE": "30"},
                                 **gateway_overrides(args))
    assert settings.http_keepalive_s == 90
