"""Artifacts to and from S3: whole prefixes, multipart, resumable, sha256-verified.

Each object carries its sha256 in its metadata (`x-amz-meta-sha256`), so a second push sends only
what changed and a pull skips files that already match the manifest. `manifest.json` goes up last
(an interrupted push never looks complete) and comes down first (it is the list of what to fetch
and the hashes to check). Credentials come from boto3's standard chain (environment, profile,
instance role) and are never printed; `--endpoint-url` or AWS_ENDPOINT_URL selects an S3-compatible
endpoint.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engines.manifest import MANIFEST_NAME, parse_manifest, read_manifest, sha256_file

MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNK = 64 << 20
SHA256_KEY = "sha256"

Progress = Callable[[str, int], None]  # (relative path, bytes) after each file


class ArtifactIntegrityError(RuntimeError):
    """A downloaded file whose sha256 differs from the manifest's."""


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str  # without a trailing slash; "" for the bucket root

    @classmethod
    def parse(cls, url: str) -> "S3Url":
        if not url.startswith("s3://"):
            raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"{url!r} names no bucket")
        return cls(bucket, prefix.strip("/"))

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass
class TransferReport:
    sent: list[str] = field(default_factory=list)  # uploaded or downloaded
    skipped: list[str] = field(default_factory=list)  # already matching on the other side
    bytes: int = 0


def is_s3_url(value: str | os.PathLike) -> bool:
    return str(value).startswith("s3://")


def s3_client(endpoint_url: str | None = None):
    import boto3

    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    return boto3.client("s3", endpoint_url=endpoint_url)


def transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK,
                          max_concurrency=8, use_threads=True)


def _remote_matches(client, url: S3Url, relative: str, size: int, sha256: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=url.bucket, Key=url.key(relative))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return head.get("ContentLength") == size and head.get("Metadata", {}).get(SHA256_KEY) == sha256


def upload_artifact(local_dir: Path, url: str, client=None, progress: Progress | None = None) -> TransferReport:
    """Upload an artifact directory (it must hold a manifest); files already there unchanged are skipped."""
    local_dir, target = Path(local_dir), S3Url.parse(url)
    client = client or s3_client()
    manifest = read_manifest(local_dir)
    files = dict(manifest.files)
    files[MANIFEST_NAME] = sha256_file(local_dir / MANIFEST_NAME)
    report = TransferReport()
    order = [name for name in sorted(files) if name != MANIFEST_NAME] + [MANIFEST_NAME]
    for relative in order:
        path = local_dir / relative
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in the manifest but missing; rebuild the artifact")
        size, digest = path.stat().st_size, files[relative]
        if _remote_matches(client, target, relative, size, digest):
            report.skipped.append(relative)
            continue
        client.upload_file(str(path), target.bucket, target.key(relative),
                           ExtraArgs={"Metadata": {SHA256_KEY: digest}}, Config=transfer_config())
        report.sent.append(relative)
        report.bytes += size
        if progress:
            progress(relative, size)
    return report


def _fetch(client, source: S3Url, relative: str, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    os.close(handle)
    try:
        client.download_file(source.bucket, source.key(relative), partial, Config=transfer_config())
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def download_artifact(url: str, local_dir: Path, client=None, progress: Progress | None = None) -> TransferReport:
    """Download an artifact; every file is checked against the manifest's sha256, and a mismatch raises
    ArtifactIntegrityError naming the file. Files already present with the right hash are skipped."""
    source, local_dir = S3Url.parse(url), Path(local_dir)
    client = client or s3_client()
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=source.bucket, Key=source.key(MANIFEST_NAME))["Body"].read()
    except ClientError as exc:
        raise FileNotFoundError(f"{source}/{MANIFEST_NAME}: cannot read the manifest "
                                f"({exc.response.get('Error', {}).get('Code', 'error')})") from exc
    manifest = parse_manifest(body, f"{source}/{MANIFEST_NAME}")
    report = TransferReport()
    corrupt = []
    for relative, expected in sorted(manifest.files.items()):
        path = local_dir / relative
        if path.is_file() and sha256_file(path) == expected:
            report.skipped.append(relative)
            continue
        _fetch(client, source, relative, path)
        actual = sha256_file(path)
        if actual != expected:
            path.unlink()
            corrupt.append(f"{relative}: sha256 {actual} but the manifest says {expected}")
            continue
        report.sent.append(relative)
        report.bytes += path.stat().st_size
        if progress:
            progress(relative, path.stat().st_size)
    if corrupt:
        raise ArtifactIntegrityError(f"{source}: corrupt download, removed locally:\n"
                                     + "\n".join(f"  - {line}" for line in corrupt))
    local_dir.mkdir(parents=True, exist_ok=True)
    (local_dir / MANIFEST_NAME).write_bytes(body)
    return report


def download_prefix(url: str, local_dir: Path, client=None, progress: Progress | None = None) -> TransferReport:
    """Download every object under a prefix (a Hugging Face checkpoint has no manifest); objects already
    present locally with the same size, and the same sha256 where the object carries one, are skipped."""
    source, local_dir = S3Url.parse(url), Path(local_dir)
    client = client or s3_client()
    report = TransferReport()
    paginator = client.get_paginator("list_objects_v2")
    prefix = f"{source.prefix}/" if source.prefix else ""
    for page in paginator.paginate(Bucket=source.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix):]
            if not relative or relative.endswith("/"):
                continue
            path = local_dir / relative
            if path.is_file() and path.stat().st_size == item["Size"]:
                remote_sha = client.head_object(Bucket=source.bucket, Key=item["Key"]).get("Metadata", {}).get(
                    SHA256_KEY)
                if remote_sha is None or remote_sha == sha256_file(path):
                    report.skipped.append(relative)
                    continue
            _fetch(client, source, relative, path)
            report.sent.append(relative)
            report.bytes += item["Size"]
            if progress:
                progress(relative, item["Size"])
    if not report.sent and not report.skipped:
        raise FileNotFoundError(f"{source}: no objects under this prefix")
    return report
