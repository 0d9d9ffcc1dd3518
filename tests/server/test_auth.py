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


def test_key_file_lines_carry_an_id_and_limits(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text(
        f"sha256:{hash_key('sk-a')} id=team-a rpm=60 tpm=90000 concurrency=4 quota=1000000/month  # team A\n"
        f"sha256:{hash_key('sk-b').upper()} quota=500 quota_soft=400\n"
        f"sha256:{hash_key('sk-c')}\n")
    store = KeyStore.from_sources(["sk-env"], key_file)
    team_a = store.identify("sk-a")
    assert team_a.id == "team-a"
    assert (team_a.limits.rpm, team_a.limits.tpm, team_a.limits.concurrency) == (60, 90000, 4)
    assert (team_a.limits.quota, team_a.limits.quota_period) == (1000000, "month")
    b = store.identify("sk-b")
    assert b.id == f"key-{hash_key('sk-b')[:8]}" and b.limits.quota_period == "day" and b.limits.quota_soft == 400
    assert not store.identify("sk-c").limits.limited
    assert store.identify("sk-env").id == f"key-{hash_key('sk-env')[:8]}"
    assert store.identify("sk-unknown") is None


@pytest.mark.parametrize("options,message", [
    ("rpm=0", "rpm='0': expected a positive integer"), ("rpm=ten", "expected a positive integer"),
    ("burst=5", "unknown option 'burst'"), ("quota=10/week", "quota period must be one of hour, day, month"),
    ("id=team/a", "id='team/a'"),
])
def test_bad_key_options_name_the_line(tmp_path, options, message):
    key_file = tmp_path / "keys"
    key_file.write_text(f"# keys\nsha256:{hash_key('sk-a')} {options}\n")
    with pytest.raises(ValueError, match=r"keys:2: ") as caught:
        load_key_file(key_file)
    assert message in str(caught.value)


def test_key_ids_are_unique(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text(f"sha256:{hash_key('sk-a')} id=team\nsha256:{hash_key('sk-b')} id=team\n")
    with pytest.raises(ValueError, match="key ids must be unique: team"):
        load_key_file(key_file)
