"""The blob store on S3-compatible object storage (`S3BlobStore`), configured by a URL.

``s3://bucket/prefix?endpoint=http://host:port&region=us-east-1`` names the
bucket, an optional key prefix, the engine's endpoint (path-style addressing,
which on-site engines such as Ceph RGW, SeaweedFS or MinIO need) and the
region. A blob lives at ``<prefix>/blobs/<algorithm>/<2 hex>/<hex>``, the
filesystem store's layout (registry/paths.py) under the prefix.

"A key never holds wrong bytes" holds without a staging copy: a blob streams
into a multipart upload started at its final key, one part buffer at a time,
hashed as it goes; the upload is completed only once digest and size verify,
and aborted otherwise, so the object appears whole and right or not at all.
A blob that fits in one part is verified first and then written with one
PutObject. Credentials come from the standard AWS environment variables or a
credentials file (see `load_credentials`); they are never logged, and the
instance metadata service is never asked (an on-site box has none).
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import io
import os
import stat
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from registry.blobstore import CHUNK, BlobInfo, ServeHint
from registry.digest import Digest
from registry.errors import RegistryError

# One part in memory at a time; 8 MiB keeps a 10 000-part upload (S3's limit) above 78 GiB.
DEFAULT_PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20  # S3's smallest part but the last
# CopyObject copies at most 5 GiB; larger objects are copied part by part inside the store.
MAX_COPY = 5 << 30
COPY_PART = 1 << 30


class StorageConfigError(ValueError):
    """CARGOHOLD_STORAGE_URL or the store's credentials are unusable; the message names what and why."""


@dataclass(frozen=True)
class StorageURL:
    """A parsed ``s3://`` storage URL."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"

    @classmethod
    def parse(cls, text: str) -> StorageURL:
        """Raises StorageConfigError naming what is wrong with `text`."""
        parts = urllib.parse.urlsplit(text.strip())
        if parts.scheme != "s3":
            raise StorageConfigError(f"storage URL {text!r}: the scheme must be s3:// (e.g. s3://bucket/prefix"
                                     "?endpoint=http://127.0.0.1:7480)")
        bucket = parts.netloc
        if not bucket or not all(c.isalnum() or c in "-._" for c in bucket) or not 3 <= len(bucket) <= 63:
            raise StorageConfigError(f"storage URL {text!r}: {bucket!r} is not a bucket name (3 to 63 letters, "
                                     "digits, dots, hyphens)")
        prefix = parts.path.strip("/")
        if any(seg in ("", ".", "..") for seg in prefix.split("/")) and prefix:
            raise StorageConfigError(f"storage URL {text!r}: the prefix {prefix!r} has an empty, . or .. segment")
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"endpoint", "region"})
        if unknown:
            raise StorageConfigError(f"storage URL {text!r}: unknown parameter(s) {', '.join(unknown)} "
                                     "(known: endpoint, region)")
        endpoint = query.get("endpoint", [None])[-1] or None
        if endpoint is not None:
            ep = urllib.parse.urlsplit(endpoint)
            if ep.scheme not in ("http", "https") or not ep.netloc or ep.path not in ("", "/") or ep.query:
                raise StorageConfigError(f"storage URL {text!r}: endpoint {endpoint!r} must be http(s)://host[:port]"
                                         " with no path")
            endpoint = f"{ep.scheme}://{ep.netloc}"
        region = query.get("region", ["us-east-1"])[-1] or "us-east-1"
        return cls(bucket, prefix, endpoint, region)


@dataclass(frozen=True)
class Credentials:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def load_credentials(path: Path | None, environ: dict[str, str] | None = None) -> Credentials:
    """The keys: from `path` (an AWS-style INI file, profile ``default``) if given, else the AWS variables.

    The file is refused if group or others may read it, like every secret file
    of the appliance. Raises StorageConfigError naming the file or variables
    (never a value).
    """
    env = os.environ if environ is None else environ
    if path is not None:
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise StorageConfigError(f"storage credentials file {path}: {exc.strerror}") from None
        if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
            raise StorageConfigError(f"storage credentials file {path} is readable by group or others (mode "
                                     f"{stat.S_IMODE(mode):04o}); chmod 600 it")
        parser = configparser.ConfigParser()
        try:
            parser.read_string(path.read_text())
        except (OSError, configparser.Error, UnicodeDecodeError) as exc:
            raise StorageConfigError(f"storage credentials file {path} is not an INI file: "
                                     f"{type(exc).__name__}") from None
        section = parser["default"] if parser.has_section("default") else None
        if section is None or not section.get("aws_access_key_id") or not section.get("aws_secret_access_key"):
            raise StorageConfigError(f"storage credentials file {path} needs a [default] section with "
                                     "aws_access_key_id and aws_secret_access_key")
        return Credentials(section["aws_access_key_id"].strip(), section["aws_secret_access_key"].strip(),
                           (section.get("aws_session_token") or "").strip() or None)
    access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        raise StorageConfigError("no credentials for the object store: set AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY, or CARGOHOLD_STORAGE_CREDENTIALS_FILE")
    return Credentials(access, secret, env.get("AWS_SESSION_TOKEN") or None)


def iter_parts(stream: BinaryIO, part_size: int, buffer: bytearray | None = None) -> Iterator[memoryview]:
    """The stream cut into parts of `part_size` bytes (the last shorter), all views of ONE reused buffer.

    Memory stays at one part whatever the stream's length: a part must be used
    (uploaded) before the next is asked for, since the next overwrites it.
    """
    buf = buffer if buffer is not None else bytearray(part_size)
    view = memoryview(buf)
    filled = 0
    while True:
        chunk = stream.read(min(CHUNK, part_size - filled))
        if not chunk:
            break
        view[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
        if filled == part_size:
            yield view[:filled]
            filled = 0
    if filled:
        yield view[:filled]


class _Body(io.RawIOBase):
    """A GetObject body as a binary stream (read, readinto, close)."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._body.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3BlobStore:
    """Blobs as objects in one bucket of an S3-compatible engine (see the module docstring)."""

    def __init__(self, url: StorageURL, credentials: Credentials, part_size: int = DEFAULT_PART_SIZE) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part size {part_size} is below S3's minimum of {MIN_PART_SIZE} bytes")
        self.url = url
        self.part_size = part_size
        self._credentials = credentials
        self._pid = os.getpid()
        self._shared: Any = None
        self._probe_pid = os.getpid()
        self._probe_client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3BlobStore({self.describe()})"

    def describe(self) -> str:
        """The store as an operator names it: bucket, prefix and endpoint (never a key)."""
        where = f"s3://{self.url.bucket}/{self.url.prefix}".rstrip("/")
        return f"{where} at {self.url.endpoint or 'AWS'}"

    @property
    def client(self) -> Any:
        """One boto3 client per process (made after gunicorn forks: a client's connections must not be shared)."""
        if self._shared is None or self._pid != os.getpid():
            with self._lock:
                if self._shared is None or self._pid != os.getpid():
                    self._shared = self._make_client()
                    self._pid = os.getpid()
        return self._shared

    @property
    def _probe(self) -> Any:
        """A client that tries once with short timeouts: /readyz must answer a load balancer in seconds."""
        with self._lock:
            if self._probe_client is None or self._probe_pid != os.getpid():
                self._probe_client = self._make_client(attempts=1, connect_timeout=2, read_timeout=5)
                self._probe_pid = os.getpid()
            return self._probe_client

    def _make_client(self, attempts: int = 3, connect_timeout: float = 5, read_timeout: float = 60) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        c = self._credentials
        return boto3.session.Session().client(
            "s3", endpoint_url=self.url.endpoint, region_name=self.url.region,
            aws_access_key_id=c.access_key, aws_secret_access_key=c.secret_key, aws_session_token=c.session_token,
            config=BotoConfig(
                signature_version="s3v4", s3={"addressing_style": "path"},
                retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                # Every gunicorn thread and import adopter may talk to the store at once.
                max_pool_connections=64,
                # On-site engines do not all accept the newer flexible checksums (aws-chunked trailers);
                # the store verifies every blob's digest itself anyway.
                request_checksum_calculation="when_required", response_checksum_validation="when_required"))

    # -- keys ----------------------------------------------------------------------------------------------

    def key(self, digest: Digest) -> str:
        return self._under(f"blobs/{digest.algorithm}/{digest.encoded[:2]}/{digest.encoded}")

    def _under(self, rest: str) -> str:
        return f"{self.url.prefix}/{rest}" if self.url.prefix else rest

    # -- errors --------------------------------------------------------------------------------------------

    def _fail(self, exc: Exception, what: str) -> RegistryError:
        """The registry error for a failed store call: 503 (retry later) when the store is down or busy, else 500.

        The message names the operation and the store's error code, never the endpoint or a key: clients read it.
        """
        code = _error_code(exc)
        unavailable = code in ("", "ServiceUnavailable", "SlowDown", "InternalError", "503", "500")
        return RegistryError("UNKNOWN", f"the object store failed {what} ({code or type(exc).__name__})",
                             status=503 if unavailable else 500)

    def check(self) -> str | None:
        """None if the bucket answers; otherwise what is wrong, for /readyz and the start-up check."""
        try:
            self._probe.head_bucket(Bucket=self.url.bucket)
        except Exception as exc:  # botocore raises many types; the words matter, not the class
            code = _error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                return f"the object store's bucket {self.url.bucket!r} does not exist"
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return f"access to the object store's bucket {self.url.bucket!r} is denied (check the credentials)"
            return f"the object store cannot be reached ({code or type(exc).__name__})"
        return None

    # -- the protocol --------------------------------------------------------------------------------------

    def stat(self, digest: Digest) -> BlobInfo | None:
        try:
            head = self.client.head_object(Bucket=self.url.bucket, Key=self.key(digest))
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(exc, f"to stat blob {digest}") from None
        return BlobInfo(digest, int(head["ContentLength"]), head["LastModified"].timestamp())

    def open(self, digest: Digest, offset: int = 0) -> BinaryIO:
        """A stream of the blob from byte `offset`; raises BLOB_UNKNOWN if it is absent."""
        extra = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            got = self.client.get_object(Bucket=self.url.bucket, Key=self.key(digest), **extra)
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in the store") from None
            raise self._fail(exc, f"to read blob {digest}") from None
        return io.BufferedReader(_Body(got["Body"]), CHUNK)

    def local_path(self, digest: Digest) -> Path | None:
        return None

    def serve_hint(self, digest: Digest, expires: int) -> ServeHint:
        """A presigned GET URL valid `expires` seconds, typed application/octet-stream."""
        url = self.client.generate_presigned_url(
            "get_object", ExpiresIn=expires,
            Params={"Bucket": self.url.bucket, "Key": self.key(digest),
                    "ResponseContentType": "application/octet-stream"})
        return ServeHint(url=url)

    def require_space(self, incoming: int, reserve: int, what: str) -> None:
        """Nothing to check locally: blobs do not land on the data volume (the engine's quota answers)."""

    def ingest(self, stream: BinaryIO, expected: Digest | None = None, expected_size: int | None = None) -> BlobInfo:
        """Stream into a multipart upload at the final key; complete it only if digest and size verify.

        Same contract as the filesystem store: DIGEST_INVALID / SIZE_INVALID on
        a mismatch (the upload is aborted: no object appears), idempotent for a
        blob already stored (then nothing is written; the bytes are still read
        and checked, and the object's age is refreshed for GC's grace).
        """
        algorithm = expected.algorithm if expected else "sha256"
        hasher = hashlib.new(algorithm)
        exists = expected is not None and self.stat(expected) is not None
        key = self.key(expected) if expected is not None else None
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        size = 0
        small = b""
        try:
            for part in iter_parts(stream, self.part_size):
                size += len(part)
                if expected_size is not None and size > expected_size:
                    raise RegistryError("SIZE_INVALID", f"blob is larger than the expected {expected_size} bytes")
                hasher.update(part)
                if exists:
                    continue
                if len(part) < self.part_size and upload_id is None:
                    # The stream ended inside its first part: the whole blob, written by one PutObject once
                    # it verifies. (A full part means more may follow: the multipart upload starts at once,
                    # so no second part is ever read while the first is still held.)
                    small = bytes(part)
                    continue
                if key is None:
                    # Without an expected digest the final key is known only at the end: such blobs are
                    # manifests and configs (small). A larger one is refused rather than held whole.
                    raise RegistryError("SIZE_INVALID", f"a blob without an expected digest must be smaller than "
                                        f"one part ({self.part_size} bytes)")
                if upload_id is None:
                    upload_id = self.client.create_multipart_upload(
                        Bucket=self.url.bucket, Key=key, ContentType="application/octet-stream")["UploadId"]
                parts.append(self._upload_part(key, upload_id, len(parts) + 1, part))
            if expected_size is not None and size != expected_size:
                raise RegistryError("SIZE_INVALID", f"blob has {size} bytes, expected {expected_size}")
            digest = Digest(algorithm, hasher.hexdigest())
            if expected is not None and digest != expected:
                raise RegistryError("DIGEST_INVALID", f"content digest {digest} does not match the expected {expected}")
            if exists:
                self.touch(digest)
                return BlobInfo(digest, size)
            if upload_id is not None:
                assert key is not None
                self.client.complete_multipart_upload(Bucket=self.url.bucket, Key=key, UploadId=upload_id,
                                                      MultipartUpload={"Parts": parts})
                upload_id = None
                return BlobInfo(digest, size)
            return self._put_small(small, digest)
        except RegistryError:
            raise
        except Exception as exc:
            raise self._fail(exc, "to write a blob") from None
        finally:
            if upload_id is not None:
                self._abort(key or "", upload_id)

    def _upload_part(self, key: str, upload_id: str, number: int, data: memoryview | bytes) -> dict[str, Any]:
        got = self.client.upload_part(Bucket=self.url.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                      Body=bytes(data))
        return {"PartNumber": number, "ETag": got["ETag"]}

    def _abort(self, key: str, upload_id: str) -> None:
        # A failed abort leaves parts the engine's lifecycle rules expire; the caller's error is what matters.
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(Bucket=self.url.bucket, Key=key, UploadId=upload_id)

    def _put_small(self, data: bytes, digest: Digest) -> BlobInfo:
        self.client.put_object(Bucket=self.url.bucket, Key=self.key(digest), Body=data,
                               ContentType="application/octet-stream")
        return BlobInfo(digest, len(data))

    def ingest_bytes(self, data: bytes, expected: Digest | None = None) -> BlobInfo:
        """Store a small in-memory blob (a manifest or config). Same contract as `ingest`."""
        digest = Digest.of_bytes(data, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise RegistryError("DIGEST_INVALID", f"content digest {digest} does not match the expected {expected}")
        try:
            if self.stat(digest) is not None:
                self.touch(digest)
                return BlobInfo(digest, len(data))
            return self._put_small(data, digest)
        except RegistryError:
            raise
        except Exception as exc:
            raise self._fail(exc, "to write a manifest") from None

    def adopt(self, path: Path, digest: Digest, size: int) -> BlobInfo:
        """Stream a local file the caller verified into the store (checked again on the way), then remove it."""
        with path.open("rb") as f:
            info = self.ingest(f, digest, size)
        path.unlink(missing_ok=True)
        return info

    def touch(self, digest: Digest) -> None:
        """Make the object's LastModified now, so GC's grace period counts from this reuse.

        Why a copy onto itself (REPLACE metadata) rather than freshness in the
        database: GC's file sweep judges objects no row names, and the moment
        that matters is before a push or import has written its row; the
        object's own age is the one clock both sides see, as a file's mtime is
        for the filesystem store. The copy happens inside the engine: no bytes
        pass through the appliance.
        """
        key = self.key(digest)
        try:
            self._copy(key, key, metadata={"cargohold-touched": "1"})
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return
            raise self._fail(exc, f"to refresh blob {digest}") from None

    def _copy(self, src: str, dst: str, metadata: dict[str, str] | None = None) -> None:
        head = self.client.head_object(Bucket=self.url.bucket, Key=src)
        size = int(head["ContentLength"])
        source = {"Bucket": self.url.bucket, "Key": src}
        if size <= MAX_COPY:
            self.client.copy_object(Bucket=self.url.bucket, Key=dst, CopySource=source,
                                    MetadataDirective="REPLACE", Metadata=metadata or {},
                                    ContentType="application/octet-stream")
            return
        upload_id = self.client.create_multipart_upload(Bucket=self.url.bucket, Key=dst, Metadata=metadata or {},
                                                        ContentType="application/octet-stream")["UploadId"]
        try:
            parts = []
            for n, start in enumerate(range(0, size, COPY_PART), 1):
                end = min(start + COPY_PART, size) - 1
                got = self.client.upload_part_copy(Bucket=self.url.bucket, Key=dst, UploadId=upload_id, PartNumber=n,
                                                   CopySource=source, CopySourceRange=f"bytes={start}-{end}")
                parts.append({"PartNumber": n, "ETag": got["CopyPartResult"]["ETag"]})
            self.client.complete_multipart_upload(Bucket=self.url.bucket, Key=dst, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            self._abort(dst, upload_id)
            raise

    def quarantine(self, digest: Digest, name: str) -> str | None:
        """Move a damaged blob to ``<prefix>/quarantine/<name>``; where it went, or None if it was gone."""
        dst = self._under(f"quarantine/{name}")
        try:
            self._copy(self.key(digest), dst)
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(exc, f"to quarantine blob {digest}") from None
        self.delete(digest)
        return f"s3://{self.url.bucket}/{dst}"

    def delete(self, digest: Digest) -> bool:
        """Remove a blob's object; True if it existed. Idempotent."""
        if self.stat(digest) is None:
            return False
        try:
            self.client.delete_object(Bucket=self.url.bucket, Key=self.key(digest))
        except Exception as exc:
            raise self._fail(exc, f"to delete blob {digest}") from None
        return True

    def walk(self) -> Iterator[BlobInfo]:
        """Every blob in the bucket under the prefix (keys that are not a blob's are skipped)."""
        base = self._under("blobs/")
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.url.bucket, Prefix=base):
                for obj in page.get("Contents", ()):
                    rest = obj["Key"][len(base):].split("/")
                    if len(rest) != 3 or rest[1] != rest[2][:2]:
                        continue
                    try:
                        digest = Digest.parse(f"{rest[0]}:{rest[2]}")
                    except RegistryError:
                        continue
                    yield BlobInfo(digest, int(obj["Size"]), obj["LastModified"].timestamp())
        except RegistryError:
            raise
        except Exception as exc:
            raise self._fail(exc, "to list blobs") from None


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def open_s3_store(url_text: str, credentials_file: Path | None) -> S3BlobStore:
    """The store a storage URL names; raises StorageConfigError naming the problem (no network used)."""
    return S3BlobStore(StorageURL.parse(url_text), load_credentials(credentials_file))
