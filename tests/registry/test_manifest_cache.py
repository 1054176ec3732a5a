"""registry.manifest_cache: bounded, least recently used out first, and only bytes that match their digest."""

from __future__ import annotations

from registry.digest import Digest
from registry.manifest_cache import ManifestCache


def _manifest(n: int, size: int = 100) -> tuple[Digest, bytes]:
    data = (b'{"n": %d, "pad": "' % n) + b"x" * size + b'"}'
    return Digest.of_bytes(data), data


def test_a_cached_manifest_is_returned_and_the_least_recently_used_goes_first() -> None:
    entries = [_manifest(i) for i in range(3)]
    cache = ManifestCache(max_bytes=sum(len(d) for _, d in entries))
    for digest, data in entries:
        cache.put(digest, data)
    assert [cache.get(d) for d, _ in entries] == [d for _, d in entries]
    assert cache.get(entries[0][0]) is not None  # now the most recently used; entries[1] is the oldest
    fourth = _manifest(3)
    cache.put(*fourth)
    assert cache.get(entries[1][0]) is None
    assert cache.get(entries[0][0]) == entries[0][1]
    assert cache.get(fourth[0]) == fourth[1]
    assert cache.size <= cache.max_bytes


def test_bytes_that_do_not_match_their_digest_or_exceed_the_bound_are_not_kept() -> None:
    cache = ManifestCache(max_bytes=1000)
    digest, data = _manifest(1)
    cache.put(digest, data + b" ")  # what a damaged object would return
    assert cache.get(digest) is None
    big_digest, big = _manifest(2, size=2000)
    cache.put(big_digest, big)
    assert cache.get(big_digest) is None and cache.size == 0
    cache.put(digest, data)
    assert cache.get(digest) == data and cache.size == len(data)
