"""Resumable SHA-256 whose state can be saved to SQLite between requests.

Chunked uploads may arrive at any gunicorn worker, so the running hash of an
upload must survive between requests. hashlib objects cannot be serialised,
but OpenSSL's SHA256_CTX is a plain public struct: we drive libcrypto's
SHA256_* functions through ctypes and store the struct's bytes. It is the
same OpenSSL code hashlib uses (SHA-NI where the CPU has it), so it is as
fast. If libcrypto cannot be loaded, `available()` is False and callers
re-hash the bytes on disk instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

# sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len — all 32-bit.
_CTX_SIZE = 112


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.SHA256_Init.argtypes = [ctypes.c_void_p]
        lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.SHA256_Final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return lib


def available() -> bool:
    """True if hash state can be saved and resumed on this machine."""
    return _lib() is not None and _self_test()


@lru_cache(maxsize=1)
def _self_test() -> bool:
    import hashlib

    h = ResumableSha256()
    h.update(b"cargohold" * 100)
    h = ResumableSha256(h.state())
    h.update(b"x")
    return h.hexdigest() == hashlib.sha256(b"cargohold" * 100 + b"x").hexdigest()


class ResumableSha256:
    """SHA-256 with `state()` bytes that `ResumableSha256(state)` resumes."""

    def __init__(self, state: bytes | None = None) -> None:
        lib = _lib()
        if lib is None:
            raise RuntimeError("libcrypto is not available for resumable hashing")
        self._lib = lib
        if state is None:
            self._ctx = ctypes.create_string_buffer(_CTX_SIZE)
            lib.SHA256_Init(self._ctx)
        else:
            if len(state) != _CTX_SIZE:
                raise ValueError("saved SHA-256 state has the wrong size")
            self._ctx = ctypes.create_string_buffer(state, _CTX_SIZE)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if isinstance(data, bytes):
            self._lib.SHA256_Update(self._ctx, data, len(data))
            return
        view = memoryview(data).cast("B")
        if view.readonly:
            # ctypes can only borrow a writable buffer; a read-only view is copied once.
            copy = bytes(view)
            self._lib.SHA256_Update(self._ctx, copy, len(copy))
            return
        buf = (ctypes.c_char * len(view)).from_buffer(view)
        self._lib.SHA256_Update(self._ctx, buf, len(view))

    def state(self) -> bytes:
        return self._ctx.raw

    def hexdigest(self) -> str:
        ctx = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)  # Final must not consume our state
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, ctx)
        return out.raw.hex()
