"""Sending a blob's bytes to an HTTP client, whichever blob store holds them (used by /v2/ and file downloads).

The store says how its bytes can be reached (`BlobStore.serve_hint`): a local
file, or a short-lived presigned URL on an object store. From that and how
the appliance runs (`BlobServing`):

* behind the nginx front, a GET answers with ``X-Accel-Redirect``: to the
  front's file location (sendfile), or to its object location, where nginx
  proxies the presigned URL to the object store; either way no gunicorn
  thread is held while a slow client reads, and nginx honours ``Range``;
* with ``CARGOHOLD_STORAGE_REDIRECT`` on and an object store, a GET answers
  307 to the presigned URL (only when every client can reach the store);
* without a front, files go out with ``send_file`` and objects stream from
  the store in chunks (flat memory), a single ``Range`` honoured.

HEAD never touches the bytes: the size and digest are known.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from flask import Response, request, send_file
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from registry.blobstore import CHUNK, BlobStore
from registry.digest import Digest

# The front's internal location that proxies a presigned object-store URL (web/front.py renders it).
ACCEL_OBJECT_PREFIX = "/_cargohold/object/"
# The WSGI environ key with the size of a body the front sends from the object store (web/requestlog.py counts it).
FRONT_BODY_SIZE = "cargohold.front_body_size"


@dataclass(frozen=True)
class BlobServing:
    """How blob bodies go out: through the front (its file location prefix), by redirect, or from the app."""

    accel_prefix: str | None = None  # set when the nginx front sends bodies
    redirect: bool = False  # an object store's blobs: 307 to a presigned URL
    expires: int = 300  # seconds a presigned URL stays valid


def blob_response(store: BlobStore, digest: Digest, size: int, headers: dict[str, str], serving: BlobServing,
                  download_name: str | None = None) -> Response:
    """The answer to GET or HEAD of a blob of `size` bytes; `headers` (digest, ETag, caching...) go on it.

    Raises RequestedRangeNotSatisfiable for a Range the blob cannot satisfy (the
    front would answer it in HTML), and BLOB_UNKNOWN when the store lost the blob.
    """
    hint = store.serve_hint(digest, serving.expires)
    if hint.path is not None and not (serving.accel_prefix and request.method == "GET"):
        # The app sends the file itself: send_file does conditionals and Range (and HEAD) as it always has.
        resp = send_file(hint.path, mimetype="application/octet-stream", conditional=True, etag=str(digest),
                         max_age=31536000, as_attachment=download_name is not None, download_name=download_name)
        resp.headers.update({k: v for k, v in headers.items() if k != "ETag"})
        resp.headers["Accept-Ranges"] = "bytes"
        return resp
    if request.if_none_match.contains(str(digest)):
        return Response(status=304, headers=headers)
    wanted = request.range
    span: tuple[int, int] | None = None
    if "Range" in request.headers:
        span = wanted.range_for_length(size) if wanted is not None and wanted.units == "bytes" and \
            len(wanted.ranges) == 1 else None
        if span is None:
            raise RequestedRangeNotSatisfiable(length=size)
    disposition = {"Content-Disposition": f'attachment; filename="{download_name}"'} if download_name else {}
    if request.method == "GET":
        if hint.url is not None and serving.redirect:
            return Response(status=307, headers={**headers, "Location": hint.url, "Cache-Control": "no-store"})
        if serving.accel_prefix and hint.path is not None:
            # <blobs>/<algorithm>/<2 hex>/<hex>: the front's file location aliases <blobs>/.
            rel = hint.path.relative_to(hint.path.parents[2]).as_posix()
            return Response(status=200, mimetype="application/octet-stream",
                            headers={**headers, **disposition, "X-Accel-Redirect": serving.accel_prefix + rel})
        if serving.accel_prefix and hint.url is not None:
            # nginx proxies this to the store (the signature is in the query; the request log never shows it).
            parts = urllib.parse.urlsplit(hint.url)
            target = ACCEL_OBJECT_PREFIX + parts.path.lstrip("/") + "?" + parts.query
            request.environ[FRONT_BODY_SIZE] = size
            return Response(status=200, mimetype="application/octet-stream",
                            headers={**headers, **disposition, "X-Accel-Redirect": target})
    base = {**headers, **disposition, "Accept-Ranges": "bytes"}
    if span is None:
        start, end, status = 0, size, 200
    else:
        start, end, status = span[0], span[1], 206
        base["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    base["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status=status, headers=base, mimetype="application/octet-stream")
    stream = store.open(digest, start)  # opened here, so a lost blob is a 404 before any byte goes out
    return Response(_chunks(stream, end - start), status=status, headers=base, mimetype="application/octet-stream",
                    direct_passthrough=True)


def _chunks(stream: BinaryIO, length: int) -> Iterator[bytes]:
    left = length
    try:
        while left > 0:
            chunk = stream.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        stream.close()
