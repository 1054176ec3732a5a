"""Unit tests of registry.hashstate: SHA-256 state that survives between requests and processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from registry import hashstate

pytestmark = pytest.mark.skipif(not hashstate.available(), reason="libcrypto not loadable; uploads re-hash instead")


def test_matches_hashlib_across_saved_states() -> None:
    data = os.urandom(1 << 20)
    h = hashstate.ResumableSha256()
    # Odd split points cross SHA-256's 64-byte block boundary in every way.
    for start, end in ((0, 1), (1, 63), (63, 65), (65, 1000), (1000, 700_001), (700_001, len(data))):
        h.update(data[start:end])
        h = hashstate.ResumableSha256(h.state())
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


def test_hexdigest_does_not_consume_the_state() -> None:
    h = hashstate.ResumableSha256()
    h.update(b"abc")
    assert h.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    h.update(b"def")
    assert h.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()


def test_empty_and_buffer_inputs() -> None:
    assert hashstate.ResumableSha256().hexdigest() == hashlib.sha256(b"").hexdigest()
    h = hashstate.ResumableSha256()
    h.update(bytearray(b"ab"))
    h.update(memoryview(b"xcdx")[1:3])
    assert h.hexdigest() == hashlib.sha256(b"abcd").hexdigest()


def test_state_has_a_fixed_size_and_wrong_sizes_are_refused() -> None:
    state = hashstate.ResumableSha256().state()
    assert isinstance(state, bytes) and len(state) == 112
    with pytest.raises(ValueError):
        hashstate.ResumableSha256(state[:-1])


def test_state_resumes_in_another_process() -> None:
    h = hashstate.ResumableSha256()
    h.update(b"first half ")
    code = ("import sys; from registry import hashstate; h = hashstate.ResumableSha256(bytes.fromhex(sys.argv[1])); "
            "h.update(b'second half'); print(h.hexdigest())")
    out = subprocess.run([sys.executable, "-c", code, h.state().hex()], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hashlib.sha256(b"first half second half").hexdigest()
