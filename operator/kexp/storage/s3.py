"""S3 access through the MinIO SDK, which speaks to any S3-compatible store."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlparse

from minio import Minio


@dataclass(frozen=True)
class S3Credentials:
    """Where an S3 store is and how to sign requests to it. Never logged or put in status."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def __repr__(self) -> str:  # keep secrets out of tracebacks and logs
        return f"S3Credentials(endpoint={self.endpoint!r}, access_key=***, secret_key=***)"


def s3_client(creds: S3Credentials) -> Minio:
    """A client for ``creds.endpoint`` (``http://host:port`` or ``https://host:port``)."""
    url = urlparse(creds.endpoint)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"S3 endpoint must look like http(s)://host:port, got {creds.endpoint!r}")
    return Minio(
        url.netloc,
        access_key=creds.access_key,
        secret_key=creds.secret_key,
        secure=url.scheme == "https",
        region=creds.region,
    )


@lru_cache(maxsize=16)
def shared_s3_client(creds: S3Credentials) -> Minio:
    """One client per set of credentials, reused (MinIO's clients are thread-safe).

    Each client holds its own connection pool: a new client per read opened a new TCP
    connection per read, and the operator reads a heartbeat of every running experiment every
    few seconds. Building the client and connecting were about 5% of the operator's CPU
    through a 1000-Experiment benchmark. New credentials (a rotated Secret) get a new client.
    """
    return s3_client(creds)


def ensure_bucket(client: Minio, bucket: str) -> bool:
    """Create ``bucket`` unless it exists; True when it was created now."""
    if client.bucket_exists(bucket):
        return False
    client.make_bucket(bucket)
    return True


def read_object(client: Minio, bucket: str, key: str) -> bytes | None:
    """An object's bytes, or None when it (or its bucket) does not exist."""
    from minio.error import S3Error

    try:
        resp = client.get_object(bucket, key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket"):
            return None
        raise
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()
