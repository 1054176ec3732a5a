"""Registry errors: the OCI error codes, declared once, and their HTTP status.

The core raises `RegistryError`; the HTTP layer turns it into the
distribution-spec body ``{"errors": [{"code", "message", "detail"}]}``.
"""

from __future__ import annotations

from typing import Any

# Code -> default HTTP status, per the OCI distribution spec's error table
# (plus the few codes distribution and Harbor clients also understand).
STATUS: dict[str, int] = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    "RANGE_INVALID": 416,
    "PAYLOAD_TOO_LARGE": 413,
    "INSUFFICIENT_STORAGE": 507,
    "TAG_INVALID": 400,
    "PAGINATION_NUMBER_INVALID": 400,
    "UNKNOWN": 500,
    # Harbor's answer to a pull its project policy forbids (content trust: the image is not signed).
    "PROJECT_POLICY_VIOLATION": 412,
}


class RegistryError(Exception):
    """An error with an OCI error code and a message that names the problem."""

    def __init__(self, code: str, message: str, detail: Any = None, status: int | None = None) -> None:
        super().__init__(message)
        if code not in STATUS:
            raise ValueError(f"undeclared registry error code {code!r}")
        self.code = code
        self.message = message
        self.detail = detail
        self.status = status if status is not None else STATUS[code]

    def to_json(self) -> dict[str, Any]:
        """The distribution-spec error body for this error."""
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}
