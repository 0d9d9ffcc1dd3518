"""Bearer-token auth for every /v1 route, and who the caller is (a key id and its limits).

Keys come from INGOT_API_KEYS (comma-separated, plain) and/or INGOT_API_KEYS_FILE, one key a line:

    sha256:<64 hex digits> [id=team-a] [rpm=60] [tpm=90000] [concurrency=4] [quota=1000000/day] [quota_soft=800000]

`#` starts a comment. Only sha256 digests are kept in memory and a presented key is compared, digest to
digest, in constant time against each of them. The key id labels metrics and the usage log (never the key);
a key without `id=` is named after the first 8 hex digits of its digest. Limits are described in
server/limits.py.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from server.errors import APIError
from server.limits import KeyLimits, parse_limits

_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class KeyInfo:
    id: str
    limits: KeyLimits = KeyLimits()


ANONYMOUS = KeyInfo("anonymous")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _default_id(digest: str) -> str:
    return f"key-{digest[:8]}"


def parse_key_line(line: str) -> tuple[str, KeyInfo]:
    """(digest, key info) of one key-file line; ValueError says what is wrong."""
    first, *options = line.split()
    algorithm, _, digest = first.partition(":")
    digest = digest.lower()
    if algorithm != "sha256" or len(digest) != 64 or not set(digest) <= _HEX:
        raise ValueError("expected 'sha256:<64 hex digits>'")
    fields = dict(option.partition("=")[::2] for option in options)
    key_id = fields.pop("id", "") or _default_id(digest)
    if not key_id.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(key_id) > 64:
        raise ValueError(f"id={key_id!r}: use up to 64 letters, digits, '-', '_' or '.'")
    return digest, KeyInfo(key_id, parse_limits(fields))


def load_key_file(path: Path) -> list[tuple[str, KeyInfo]]:
    keys = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            keys.append(parse_key_line(line))
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
    ids = [info.id for _, info in keys]
    duplicates = sorted({key_id for key_id in ids if ids.count(key_id) > 1})
    if duplicates:
        raise ValueError(f"{path}: key ids must be unique: {', '.join(duplicates)}")
    return keys


class KeyStore:
    def __init__(self, keys: list[tuple[str, KeyInfo]]):
        self._keys = [(bytes.fromhex(digest), info) for digest, info in keys]

    @classmethod
    def from_sources(cls, plain_keys: list[str], key_file: Path | None) -> "KeyStore":
        keys = [(digest, KeyInfo(_default_id(digest))) for digest in (hash_key(k) for k in plain_keys if k)]
        if key_file is not None:
            keys += load_key_file(key_file)
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, key: str) -> KeyInfo | None:
        presented = hashlib.sha256(key.encode("utf-8")).digest()
        found = None
        for digest, info in self._keys:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(presented, digest):
                found = info
        return found

    def accepts(self, key: str) -> bool:
        return self.identify(key) is not None


def require_api_key(request: Request) -> KeyInfo:
    return check_authorization(request.app.state.keys, request.headers.get("authorization", ""))


def check_authorization(store: KeyStore, header: str) -> KeyInfo:
    """The caller's key; raises a 401 APIError unless `header` (the Authorization value) carries an accepted key."""
    if not store.enabled:
        return ANONYMOUS
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", "authentication_error",
                       code="missing_api_key")
    info = store.identify(token.strip())
    if info is None:
        raise APIError(401, "Incorrect API key provided.", "authentication_error", code="invalid_api_key")
    return info
