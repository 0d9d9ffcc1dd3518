"""API keys: plain from the environment, hashed from a file; constant-time comparison of digests."""
import pytest

from server.auth import KeyStore, hash_key, load_key_file
from server.settings import Settings


def test_plain_and_hashed_keys_are_accepted(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text(f"# team keys\nsha256:{hash_key('sk-from-file')}\n\n")
    store = KeyStore.from_sources(["sk-plain"], key_file)
    assert store.accepts("sk-plain") and store.accepts("sk-from-file")
    assert not store.accepts("sk-other") and not store.accepts("")


def test_malformed_key_file_names_the_line(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("sha256:abc\n")
    with pytest.raises(ValueError, match=r"keys:1: expected 'sha256:<64 hex digits>'"):
        load_key_file(key_file)


def test_settings_from_env_parses_keys_and_never_shows_them(tmp_path):
    settings = Settings.from_env({"INGOT_ARTIFACT_DIR": str(tmp_path), "INGOT_API_KEYS": "sk-one, sk-two ,",
                                  "INGOT_TRITON_URL": "triton:8001", "INGOT_PORT": "9000"})
    assert settings.api_keys == ("sk-one", "sk-two")
    assert settings.port == 9000 and settings.triton_url == "triton:8001"
    assert "sk-one" not in repr(settings) and "sk-two" not in repr(settings)


def test_settings_require_an_artifact():
    with pytest.raises(ValueError, match="INGOT_ARTIFACT_DIR"):
        Settings.from_env({})
