"""The blob store the settings name: the data directory's files, or an S3-compatible object store.

The one place that chooses a `registry.blobstore.BlobStore` backend
(``CARGOHOLD_STORAGE_URL``); everything else uses the store it is given.
"""

from __future__ import annotations

from registry.blobserve import BlobServing
from registry.blobstore import BlobStore, FilesystemBlobStore
from registry.s3store import open_s3_store
from web.config import Config


def blob_store(config: Config) -> BlobStore:
    """The configured store; raises StorageConfigError (a ValueError) naming a bad URL or missing credentials.

    Uses no network: `BlobStore.check` is what reaches the store.
    """
    if not config.storage_url.strip():
        return FilesystemBlobStore(config.paths)
    return open_s3_store(config.storage_url, config.storage_credentials_file)


def blob_serving(config: Config, accel_prefix: str | None) -> BlobServing:
    """How blob bodies go out (registry/blobserve.py); `accel_prefix` is set when the nginx front sends them."""
    redirect = config.storage_redirect and bool(config.storage_url.strip())
    return BlobServing(accel_prefix=accel_prefix, redirect=redirect, expires=config.storage_redirect_seconds)

