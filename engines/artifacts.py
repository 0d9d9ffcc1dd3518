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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from engines.manifest import MANIFEST_NAME, parse_manifest, read_manifest, sha256_file
from engines.progress import Reporter

MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNK = 64 << 20
SHA256_KEY = "sha256"

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


def _meter(reporter: Reporter | None, description: str, total_bytes: int):
    """A byte counter for boto3's Callback, or None (no progress) when there is no reporter."""
    return reporter.transfer(description, total_bytes) if reporter else nullcontext(None)


def _remote_sizes(client, url: S3Url) -> dict[str, int]:
    """Size of every object under the prefix, by path relative to it (one listing, not one request a file)."""
    prefix = f"{url.prefix}/" if url.prefix else ""
    sizes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=url.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            sizes[item["Key"][len(prefix):]] = item["Size"]
    return sizes


def _remote_matches(client, url: S3Url, relative: str, size: int, sha256: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=url.bucket, Key=url.key(relative))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return head.get("ContentLength") == size and head.get("Metadata", {}).get(SHA256_KEY) == sha256


def upload_artifact(local_dir: Path, url: str, client=None, reporter: Reporter | None = None) -> TransferReport:
    """Upload an artifact directory (it must hold a manifest); files already there unchanged are skipped.
    With a reporter, the bytes to send show as one transfer with its rate."""
    local_dir, target = Path(local_dir), S3Url.parse(url)
    client = client or s3_client()
    manifest = read_manifest(local_dir)
    files = dict(manifest.files)
    files[MANIFEST_NAME] = sha256_file(local_dir / MANIFEST_NAME)
    report = TransferReport()
    order = [name for name in sorted(files) if name != MANIFEST_NAME] + [MANIFEST_NAME]
    pending = []
    for relative in order:
        path = local_dir / relative
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in the manifest but missing; rebuild the artifact")
        size, digest = path.stat().st_size, files[relative]
        if _remote_matches(client, target, relative, size, digest):
            report.skipped.append(relative)
        else:
            pending.append((relative, path, size, digest))
    with _meter(reporter, f"upload to {target}", sum(item[2] for item in pending)) as meter:
        for relative, path, size, digest in pending:
            client.upload_file(str(path), target.bucket, target.key(relative), Callback=meter,
                               ExtraArgs={"Metadata": {SHA256_KEY: digest}}, Config=transfer_config())
            report.sent.append(relative)
            report.bytes += size
    return report


def _fetch(client, source: S3Url, relative: str, destination: Path, meter=None) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    os.close(handle)
    try:
        client.download_file(source.bucket, source.key(relative), partial, Config=transfer_config(),
                             Callback=meter)
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def download_artifact(url: str, local_dir: Path, client=None, reporter: Reporter | None = None) -> TransferReport:
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
    pending = []
    for relative, expected in sorted(manifest.files.items()):
        path = local_dir / relative
        if path.is_file() and sha256_file(path) == expected:
            report.skipped.append(relative)
        else:
            pending.append((relative, expected))
    sizes = _remote_sizes(client, source) if reporter and pending else {}
    with _meter(reporter, f"download {source}", sum(sizes.get(item[0], 0) for item in pending)) as meter:
        for relative, expected in pending:
            path = local_dir / relative
            _fetch(client, source, relative, path, meter)
            actual = sha256_file(path)
            if actual != expected:
                path.unlink()
                corrupt.append(f"{relative}: sha256 {actual} but the manifest says {expected}")
                continue
            report.sent.append(relative)
            report.bytes += path.stat().st_size
    if corrupt:
        raise ArtifactIntegrityError(f"{source}: corrupt download, removed locally:\n"
                                     + "\n".join(f"  - {line}" for line in corrupt))
    local_dir.mkdir(parents=True, exist_ok=True)
    (local_dir / MANIFEST_NAME).write_bytes(body)
    return report


def download_prefix(url: str, local_dir: Path, client=None, reporter: Reporter | None = None) -> TransferReport:
    """Download every object under a prefix (a Hugging Face checkpoint has no manifest); objects already
    present locally with the same size, and the same sha256 where the object carries one, are skipped."""
    source, local_dir = S3Url.parse(url), Path(local_dir)
    client = client or s3_client()
    report = TransferReport()
    pending = []
    for relative, size in sorted(_remote_sizes(client, source).items()):
        if not relative or relative.endswith("/"):
            continue
        path = local_dir / relative
        if path.is_file() and path.stat().st_size == size:
            remote_sha = client.head_object(Bucket=source.bucket, Key=source.key(relative)).get(
                "Metadata", {}).get(SHA256_KEY)
            if remote_sha is None or remote_sha == sha256_file(path):
                report.skipped.append(relative)
                continue
        pending.append((relative, size))
    with _meter(reporter, f"download {source}", sum(size for _, size in pending)) as meter:
        for relative, size in pending:
            _fetch(client, source, relative, local_dir / relative, meter)
            report.sent.append(relative)
            report.bytes += size
    if not report.sent and not report.skipped:
        raise FileNotFoundError(f"{source}: no objects under this prefix")
    return report
