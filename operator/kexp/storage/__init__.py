"""Clients for S3-compatible object storage (MinIO by default)."""
