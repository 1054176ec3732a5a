"""Credential checks: scrypt runs once per credentials however many threads ask at once, and few at a time."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from registry.auth import VerifiedCache, check_password, hash_password


class _CountingScrypt:
    """Wraps hashlib.scrypt: counts calls and the most that ran at once; each call lasts at least `hold` s."""

    def __init__(self, real: Callable[..., bytes], hold: float = 0.05) -> None:
        self.real = real
        self.hold = hold
        self.calls = 0
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> bytes:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.hold)  # long enough for every thread to arrive while this one runs
            return self.real(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def scrypt(monkeypatch: pytest.MonkeyPatch) -> _CountingScrypt:
    counting = _CountingScrypt(hashlib.scrypt)
    monkeypatch.setattr(hashlib, "scrypt", counting)  # the module registry.auth calls it through
    return counting


def _at_once(count: int, work: Callable[[int], bool]) -> list[bool]:
    results: list[bool] = [False] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_threads_checking_the_same_credentials_at_once_run_scrypt_once(scrypt: _CountingScrypt) -> None:
    stored = hash_password("Right-Secret-1")
    scrypt.calls = 0
    cache = VerifiedCache()
    assert _at_once(32, lambda _: cache.check("edge", "Right-Secret-1", stored)) == [True] * 32
    assert scrypt.calls == 1
    assert cache.cached("edge", "Right-Secret-1", stored)


def test_a_wrong_password_is_never_remembered(scrypt: _CountingScrypt) -> None:
    stored = hash_password("Right-Secret-1")
    scrypt.calls = 0
    cache = VerifiedCache()
    assert _at_once(4, lambda _: cache.check("edge", "Wrong-Secret-1", stored)) == [False] * 4
    assert scrypt.calls == 4  # each waiting thread checks again: a mismatch is not a verdict to share
    assert not cache.cached("edge", "Wrong-Secret-1", stored)
    assert cache.check("edge", "Right-Secret-1", stored)


def test_at_most_two_scrypt_computations_run_at_once(scrypt: _CountingScrypt) -> None:
    stored = [hash_password(f"Secret-{i}-A") for i in range(8)]
    scrypt.most = 0
    cache = VerifiedCache()
    assert _at_once(8, lambda i: cache.check(f"robot$edge{i}", f"Secret-{i}-A", stored[i])) == [True] * 8
    assert scrypt.most == 2
    assert check_password("Secret-0-A", stored[0]) and not check_password("Secret-0-B", stored[0])
