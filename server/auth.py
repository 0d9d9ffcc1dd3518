"""Bearer-token auth for every /v1 route.

Keys come from INGOT_API_KEYS (comma-separated, plain) and/or INGOT_API_KEYS_FILE (one
`sha256:<hex>` per line, `#` comments allowed). Only sha256 digests are kept in memory and a
presented key is compared, digest to digest, in constant time against each of them.
"""
from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from fastapi import Request

from server.errors import APIError


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_key_file(path: Path) -> list[str]:
    digests = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        algorithm, _, digest = line.partition(":")
        if algorithm != "sha256" or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise ValueError(f"{path}:{number}: expected 'sha256:<64 hex digits>'")
        digests.append(digest.lower())
    return digests


class KeyStore:
    def __init__(self, digests: list[str]):
        self._digests = [bytes.fromhex(d) for d in digests]

    @classmethod
    def from_sources(cls, plain_keys: list[str], key_file: Path | None) -> "KeyStore":
        digests = [hash_key(key) for key in plain_keys if key]
        if key_file is not None:
            digests += load_key_file(key_file)
        return cls(digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, key: str) -> bool:
        presented = hashlib.sha256(key.encode("utf-8")).digest()
        matched = False
        for digest in self._digests:  # no early exit: time does not depend on which key matched
            matched |= hmac.compare_digest(presented, digest)
        return matched


def require_api_key(request: Request) -> None:
    check_authorization(request.app.state.keys, request.headers.get("authorization", ""))


def check_authorization(store: KeyStore, header: str) -> None:
    """Raises a 401 APIError unless `header` (the Authorization header's value) carries an accepted key."""
    if not store.enabled:
        return
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", "authentication_error",
                       code="missing_api_key")
    if not store.accepts(token.strip()):
        raise APIError(401, "Incorrect API key provided.", "authentication_error", code="invalid_api_key")
