"""The OCI Distribution API v1.1 at /v2/: the HTTP face of `registry.model`.

Route table (``<name>`` is a multi-component repository name):

    GET             /v2/                                  API version check
    GET             /v2/_catalog                          repositories (n, last, Link)
    GET  HEAD       /v2/<name>/manifests/<reference>      pull a manifest (content negotiation)
    PUT             /v2/<name>/manifests/<reference>      push a manifest
    DELETE          /v2/<name>/manifests/<reference>      delete by digest, or untag by tag
    GET  HEAD       /v2/<name>/blobs/<digest>             pull a blob (Range, sendfile)
    DELETE          /v2/<name>/blobs/<digest>             unlink a blob from the repository
    POST            /v2/<name>/blobs/uploads/             start, monolithic (digest), mount (mount, from)
    GET             /v2/<name>/blobs/uploads/<uuid>       upload status
    PATCH           /v2/<name>/blobs/uploads/<uuid>       append a chunk (Content-Range)
    PUT             /v2/<name>/blobs/uploads/<uuid>       finish (digest)
    DELETE          /v2/<name>/blobs/uploads/<uuid>       cancel
    GET             /v2/<name>/tags/list                  tags (n, last, Link)
    GET             /v2/<name>/referrers/<digest>         referrers (artifactType)

containerd mirror requests carry ``?ns=<upstream host>``; the name is then
resolved under the default project (`registry.names.mirror_repository`;
``?ns=host:port`` nests as ``<project>/host_port/...``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import IO, Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException

from registry import metrics
from registry.access import Access, LoginLimiter, TooManyAttempts, project_of
from registry.auth import Principal, Users
from registry.blobserve import BlobServing, blob_response
from registry.digest import Digest
from registry.errors import RegistryError
from registry.image_trust import ImageTrust
from registry.manifests import DOCKER_LIST, OCI_INDEX
from registry.model import Page, Registry
from registry.names import is_digest_reference, is_manifest_reference, mirror_repository, validate_name
from registry.numbers import NumberInvalid, parse_number
from registry.quotas import QuotaExceeded
from registry.token_api import bearer_challenge, request_principal
from registry.tokens import TokenSigner
from registry.uploads import ClientGone, Uploads

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
MAX_PAGE = 10_000
_CONTENT_RANGE = re.compile(r"^(?:bytes )?(\d{1,19})-(\d{1,19})(?:/(?:\d+|\*))?$", re.ASCII)  # ASCII: no "٣"
_EXPIRE_EVERY = 600.0
_MOUNT_FALLBACK = frozenset({"DIGEST_INVALID", "UNSUPPORTED", "NAME_INVALID", "NAME_UNKNOWN", "UNAUTHORIZED", "DENIED"})


@dataclass(frozen=True)
class DistributionConfig:
    """What the /v2/ API needs besides the model."""

    project: str
    own_hosts: frozenset[str]
    realm: str = "cargohold"
    external_url: str | None = None
    # How blob bodies go out (registry/blobserve.py): through the front (X-Accel-Redirect), by a redirect
    # to the object store, or from the app.
    serving: BlobServing = field(default_factory=BlobServing)


class _Body:
    """The request body as a plain stream: a client that vanishes reads as EOF."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def read(self, n: int = -1) -> bytes:
        try:
            return self._stream.read(n)
        except (ClientDisconnected, OSError):
            return b""


def _body() -> Any:
    return _Body(request.stream)


def _content_length() -> int | None:
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        return None
    value = request.headers.get("Content-Length")
    if value is None:
        return None
    try:
        return parse_number(value, "Content-Length")
    except NumberInvalid as exc:
        raise RegistryError("SIZE_INVALID", f"invalid Content-Length: {exc.message}") from None


def _pagination() -> tuple[int | None, str | None]:
    n_text = request.args.get("n")
    n: int | None = None
    if n_text is not None:
        if not (n_text.isascii() and n_text.isdigit()):
            raise RegistryError("PAGINATION_NUMBER_INVALID", f"n must be a non-negative integer, not {n_text[:40]!r}")
        # Any larger n is the maximum; never int() of thousands of digits (Python refuses those: a 500).
        n = MAX_PAGE if len(n_text.lstrip("0")) > len(str(MAX_PAGE)) else min(int(n_text), MAX_PAGE)
    return n, request.args.get("last")


def _paged(page: Page, path: str, key: str, extra: dict[str, Any], n: int | None) -> Response:
    resp = jsonify({**extra, key: page.items})
    if page.more and page.items and n is not None:
        resp.headers["Link"] = f'<{path}?n={n}&last={page.items[-1]}>; rel="next"'
    return resp


def _accepted(header: str) -> set[str]:
    return {part.split(";", 1)[0].strip().lower() for part in header.split(",") if part.strip()}


def error_response(exc: RegistryError, realm: str) -> Response:
    """The distribution-spec error body for `exc`, with a challenge on 401."""
    resp = jsonify(exc.to_json())
    resp.status_code = exc.status
    if exc.status == 401:
        # Harbor's token auth: clients fetch a token for this scope from the realm and retry.
        resp.headers["WWW-Authenticate"] = bearer_challenge(g.get("external_url"), g.get("auth_scope"))
    if isinstance(exc, TooManyAttempts):
        resp.headers["Retry-After"] = str(exc.retry_after)
    resp.headers[API_VERSION[0]] = API_VERSION[1]
    return resp


_HTTP_CODES = {404: "NAME_UNKNOWN", 405: "UNSUPPORTED", 413: "PAYLOAD_TOO_LARGE", 416: "RANGE_INVALID"}


def register_error_handlers(app: Flask, realm: str) -> None:
    """Answer every error under /v2/ in the spec's JSON shape."""

    @app.errorhandler(RegistryError)
    def _registry_error(exc: RegistryError) -> Response:
        return error_response(exc, realm)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response | HTTPException:
        if not request.path.startswith("/v2/") or exc.code is None:
            return exc
        code = _HTTP_CODES.get(exc.code, "UNKNOWN" if exc.code >= 500 else "UNSUPPORTED")
        msg = f"no such endpoint: {request.method} {request.path}" if exc.code == 404 else exc.description or exc.name
        resp = error_response(RegistryError(code, msg, status=exc.code), realm)
        # Keep what the exception says beyond its body: Allow on 405, Content-Range on 416.
        for key, value in exc.get_headers():
            if key.lower() not in ("content-type", "content-length"):
                resp.headers[key] = value
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # A bug, not bad input: log it with its traceback, answer in the spec's shape.
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(RegistryError("UNKNOWN", "internal error; see the appliance log"), realm)


def create_blueprint(registry: Registry, uploads: Uploads, users: Users, config: DistributionConfig,
                     access: Access | None = None, signer: TokenSigner | None = None) -> Blueprint:
    """The /v2/ blueprint bound to one registry (and its access model and token signer)."""
    bp = Blueprint("distribution", __name__, url_prefix="/v2")
    access = access or Access(registry, users, LoginLimiter(registry))
    signer = signer or TokenSigner.load_or_create(registry.paths)
    last_expiry = [0.0]
    image_trust = ImageTrust(registry)

    @bp.url_value_preprocessor
    def _resolve_name(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if not values or "name" not in values:
            return
        name = values["name"]
        ns = request.args.get("ns")
        if ns and ns.lower() not in config.own_hosts:
            name = mirror_repository(config.project, ns, name)
        values["name"] = validate_name(name)

    @bp.before_request
    def _authenticate() -> None:
        g.external_url = config.external_url
        g.principal = _principal()

    def _principal() -> Principal | None:
        # Basic (users, robots) straight on /v2/, or a Bearer token from /service/token.
        return request_principal(access, signer)

    def _allow(action: str, name: str | None) -> None:
        if action == "catalog" or name is None:
            g.auth_scope = "registry:catalog:*"
        else:
            g.auth_scope = f"repository:{name}:{'pull,push' if action == 'push' else action}"
        access.authorize(g.principal, action, name)

    @bp.after_request
    def _version_header(resp: Response) -> Response:
        resp.headers[API_VERSION[0]] = API_VERSION[1]
        return resp

    @bp.get("/")
    def base() -> Response:
        # Anonymous clients get the challenge that sends them to the token service.
        if g.principal is None:
            raise RegistryError("UNAUTHORIZED", "authentication required")
        return jsonify({})

    @bp.get("/_catalog")
    def catalog() -> Response:
        _allow("catalog", None)
        n, last = _pagination()
        return _paged(registry.catalog(n, last), "/v2/_catalog", "repositories", {}, n)

    # -- manifests -------------------------------------------------------------

    @bp.route("/<path:name>/manifests/<reference>", methods=["GET", "HEAD"])
    def get_manifest(name: str, reference: str) -> Response:
        _allow("pull", name)
        if not is_manifest_reference(reference):
            # As CNCF distribution: a reference that is neither a tag nor a digest names no manifest (404, not
            # TAG_INVALID); a PUT to it stays a 400 (Registry.put_manifest).
            raise RegistryError("MANIFEST_UNKNOWN", f"manifest {reference[:200]!r} is not known to repository "
                                f"{name}: it is neither a valid tag nor a digest",
                                detail={"name": name, "reference": reference[:200]})
        record = registry.resolve(name, reference)
        accept = _accepted(request.headers.get("Accept", ""))
        if accept and not accept & {"*/*", "application/*"} and record.media_type not in accept:
            record = _negotiate(record, accept)
        # GET only, as Harbor: HEAD gives the digest and no content, and signers need the digest to sign.
        refusal = image_trust.pull_refusal(record, reference) if request.method == "GET" else None
        if refusal is not None:
            raise RegistryError("PROJECT_POLICY_VIOLATION", refusal,
                                detail={"name": name, "digest": str(record.digest)})
        headers = {"Docker-Content-Digest": str(record.digest), "ETag": f'"{record.digest}"',
                   "Content-Type": record.media_type}
        if request.method == "HEAD":
            headers["Content-Length"] = str(record.size)
            return Response(status=200, headers=headers)
        metrics.PULLS.labels(project_of(name)).inc()  # a pull is the manifest GET; blobs follow it
        return Response(registry.manifest_bytes(record), status=200, headers=headers)

    def _negotiate(record: Any, accept: set[str]) -> Any:
        # Like distribution: a client that cannot take a Docker manifest list
        # gets its linux/amd64 image; other unacceptable types are unknown to it.
        if record.media_type == DOCKER_LIST:
            for child, media_type, platform in registry.manifest_children(record.repository, record.digest):
                if platform and platform.get("os") == "linux" and platform.get("architecture") == "amd64" \
                        and media_type in accept:
                    return registry.resolve(record.repository, str(child))
        raise RegistryError("MANIFEST_UNKNOWN",
                            f"manifest is {record.media_type}, which the Accept header does not include",
                            detail={"mediaType": record.media_type})

    @bp.put("/<path:name>/manifests/<reference>")
    def put_manifest(name: str, reference: str) -> Response:
        _allow("push", name)
        length = _content_length()
        if length is not None and length > registry.max_manifest_bytes:
            raise RegistryError("MANIFEST_INVALID",
                                f"manifest of {length} bytes exceeds the {registry.max_manifest_bytes}-byte limit",
                                status=413)
        body = request.stream.read(registry.max_manifest_bytes + 1)
        parsed = registry.put_manifest(name, reference, body, request.headers.get("Content-Type"))
        metrics.PUSHES.labels(project_of(name)).inc()
        headers = {"Location": f"/v2/{name}/manifests/{parsed.digest}", "Docker-Content-Digest": str(parsed.digest)}
        if parsed.subject is not None:
            headers["OCI-Subject"] = str(parsed.subject.digest)
        return Response(status=201, headers=headers)

    @bp.delete("/<path:name>/manifests/<reference>")
    def delete_manifest(name: str, reference: str) -> Response:
        _allow("delete", name)
        if is_digest_reference(reference):
            registry.delete_manifest(name, Digest.parse(reference))
        else:
            registry.delete_tag(name, reference)
        return Response(status=202)

    # -- blobs -------------------------------------------------------------------

    @bp.route("/<path:name>/blobs/<digest>", methods=["GET", "HEAD"])
    def get_blob(name: str, digest: str) -> Response:
        _allow("pull", name)
        info = registry.blob(name, Digest.parse(digest))
        headers = {"Docker-Content-Digest": str(info.digest), "ETag": f'"{info.digest}"',
                   "Cache-Control": "public, max-age=31536000, immutable"}
        return blob_response(registry.store, info.digest, info.size, headers, config.serving)

    @bp.delete("/<path:name>/blobs/<digest>")
    def delete_blob(name: str, digest: str) -> Response:
        _allow("delete", name)
        registry.unlink_blob(name, Digest.parse(digest))
        return Response(status=202)

    # -- uploads -----------------------------------------------------------------

    def _upload_headers(name: str, uuid: str, offset: int) -> dict[str, str]:
        return {"Location": f"/v2/{name}/blobs/uploads/{uuid}", "Docker-Upload-UUID": uuid,
                "Range": f"0-{max(offset - 1, 0)}"}

    def _created(name: str, digest: Digest) -> Response:
        return Response(status=201, headers={"Location": f"/v2/{name}/blobs/{digest}",
                                             "Docker-Content-Digest": str(digest)})

    def _maybe_expire() -> None:
        now = time.monotonic()
        if now - last_expiry[0] > _EXPIRE_EVERY:
            last_expiry[0] = now
            uploads.expire()

    @bp.post("/<path:name>/blobs/uploads/")
    def start_upload(name: str) -> Response:
        _allow("push", name)
        _maybe_expire()
        mount, source = request.args.get("mount"), request.args.get("from")
        if mount and source:
            # The spec: a mount that cannot be done (malformed digest or name, a source
            # the client may not read, a blob the source lacks) falls back to an upload.
            try:
                digest = Digest.parse(mount)
                _allow("pull", validate_name(source))
                mounted = registry.mount_blob(name, source, digest)
            except RegistryError as exc:
                if exc.code not in _MOUNT_FALLBACK or isinstance(exc, QuotaExceeded):  # an upload would fail too
                    raise
                mounted = None
            if mounted is not None:
                return _created(name, mounted.digest)
        digest_text = request.args.get("digest")
        if digest_text:
            digest = Digest.parse(digest_text)
            registry.store.require_space(_content_length() or 0, uploads.reserve_bytes, "this upload")
            # Refused before a byte is stored when the declared size would pass the project's quota.
            registry.quota.require_repository(registry.db, name, {str(digest): _content_length() or 0})
            info = registry.store.ingest(_body(), digest, _content_length())
            registry.link_blob(name, info)
            return _created(name, info.digest)
        session = uploads.start(name)
        return Response(status=202, headers=_upload_headers(name, session.uuid, 0))

    @bp.get("/<path:name>/blobs/uploads/<uuid>")
    def upload_status(name: str, uuid: str) -> Response:
        _allow("push", name)
        session = uploads.get(name, uuid)
        return Response(status=204, headers=_upload_headers(name, uuid, session.offset))

    @bp.patch("/<path:name>/blobs/uploads/<uuid>")
    def upload_chunk(name: str, uuid: str) -> Response:
        _allow("push", name)
        session = uploads.get(name, uuid)
        try:
            start, length = _chunk_range()
            session = uploads.append(session, _body(), start, length)
        except ClientGone:
            raise RegistryError("BLOB_UPLOAD_INVALID", "the chunk ended before its Content-Length; "
                                "what arrived was kept, ask for the upload status to resume") from None
        except RegistryError as exc:
            if exc.code != "RANGE_INVALID":
                raise
            return _range_refused(exc, name, uuid)
        return Response(status=202, headers=_upload_headers(name, uuid, session.offset))

    def _range_refused(exc: RegistryError, name: str, uuid: str) -> Response:
        """A 416 that also says where the upload stands, so the client can resume without asking."""
        resp = error_response(exc, config.realm)
        resp.headers.update(_upload_headers(name, uuid, uploads.get(name, uuid).offset))
        return resp

    def _chunk_range() -> tuple[int | None, int | None]:
        length = _content_length()
        header = request.headers.get("Content-Range")
        if header is None:
            return None, length
        m = _CONTENT_RANGE.match(header.strip())
        if not m or int(m.group(2)) < int(m.group(1)):
            raise RegistryError("RANGE_INVALID", f"invalid Content-Range {header!r}: expected <start>-<end>")
        start, end = int(m.group(1)), int(m.group(2))
        if length is not None and length != end - start + 1:
            raise RegistryError("RANGE_INVALID", f"Content-Range {header} does not match Content-Length {length}")
        return start, end - start + 1

    @bp.put("/<path:name>/blobs/uploads/<uuid>")
    def finish_upload(name: str, uuid: str) -> Response:
        _allow("push", name)
        session = uploads.get(name, uuid)
        digest_text = request.args.get("digest")
        if not digest_text:
            raise RegistryError("DIGEST_INVALID", "the digest query parameter is required to finish an upload")
        digest = Digest.parse(digest_text)
        try:
            start, length = _chunk_range()
            info = uploads.finish(session, digest, _body(), length, start)
        except ClientGone:
            raise RegistryError("BLOB_UPLOAD_INVALID", "the final chunk ended before its Content-Length") from None
        except RegistryError as exc:
            if exc.code != "RANGE_INVALID":
                raise
            return _range_refused(exc, name, uuid)
        return _created(name, info.digest)

    @bp.delete("/<path:name>/blobs/uploads/<uuid>")
    def cancel_upload(name: str, uuid: str) -> Response:
        _allow("push", name)
        uploads.cancel(uploads.get(name, uuid))
        return Response(status=204)

    # -- listings ----------------------------------------------------------------

    @bp.get("/<path:name>/tags/list")
    def tags_list(name: str) -> Response:
        _allow("pull", name)
        n, last = _pagination()
        return _paged(registry.tags(name, n, last), f"/v2/{name}/tags/list", "tags", {"name": name}, n)

    @bp.get("/<path:name>/referrers/<digest>")
    def referrers(name: str, digest: str) -> Response:
        _allow("pull", name)
        artifact_type = request.args.get("artifactType")
        found = registry.referrers(name, Digest.parse(digest), artifact_type)
        resp = jsonify({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d.to_json() for d in found]})
        resp.headers["Content-Type"] = OCI_INDEX
        if artifact_type is not None:
            resp.headers["OCI-Filters-Applied"] = "artifactType"
        return resp

    return bp


