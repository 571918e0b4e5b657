# ruff: noqa: E501  (one-line field docstrings feed the README settings table)
"""The `storage` section of the settings (`RAYSCRIBE_STORAGE__*`): where job audio and bulk
files live. A module of its own so settings.py stays small."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class StorageSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    backend: Literal["local", "s3"] = "local"
    """Where job audio is kept: `local` (under data_dir) or `s3` (any S3-compatible store; needed on several nodes without a shared disk)."""

    s3_endpoint_url: str | None = None
    """S3-compatible endpoint, e.g. http://minio:9000; unset means AWS. Credentials come from the standard AWS_* environment variables."""

    s3_region: str | None = None
    """Region of the S3 endpoint (AWS_REGION is used when unset)."""

    s3_audio_prefix: str | None = None
    """Where job audio goes when backend is `s3`: an s3://bucket/prefix URL (required then)."""
