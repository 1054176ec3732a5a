"""Registry bearer tokens: the JWT code on its own, and the token service on the real appliance."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import jwt as pyjwt
import pytest
import requests

from registry.paths import DataPaths
from registry.tokens import KEY_FILE, Claims, Scope, TokenError, TokenSigner, VerifiedTokens, parse_scopes
from tests.appliance import Appliance
from tests.registry.harborapi import Harbor, errors, token_claims

# -- the JWT code ---------------------------------------------------------------------


@pytest.fixture
def signer(tmp_path: Path) -> TokenSigner:
    return TokenSigner.load_or_create(DataPaths(tmp_path), lifetime=60)


def test_key_is_generated_once_with_owner_only_permissions(tmp_path: Path) -> None:
    first = TokenSigner.load_or_create(DataPaths(tmp_path))
    key_file = tmp_path / "keys" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = TokenSigner.load_or_create(DataPaths(tmp_path))
    assert first.kid == second.kid
    token, _, _ = first.issue("admin", [])
    assert second.verify(token).subject == "admin"


def test_issued_token_round_trips_its_access(signer: TokenSigner) -> None:
    scopes = [Scope("repository", "spectro-images/a/b", ("pull", "push"))]
    token, expires_in, issued = signer.issue("robot$x", scopes, now=1_000_000.0)
    assert issued == 1_000_000.0
    assert expires_in == 60
    claims = signer.verify(token, now=1_000_030.0)
    assert claims.subject == "robot$x"
    assert claims.access == tuple(scopes)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "ES256" and header["kid"] == signer.kid
    payload = token_claims(token)
    assert payload["iss"] == "harbor-token-issuer" and payload["aud"] == "harbor-registry"
    assert payload["exp"] - payload["iat"] == 60


def test_expired_tampered_foreign_and_unsigned_tokens_are_refused(signer: TokenSigner, tmp_path: Path) -> None:
    token, _, _ = signer.issue("u", [Scope("repository", "p/r", ("pull",))], now=1_000_000.0)
    with pytest.raises(TokenError, match="expired"):
        signer.verify(token, now=1_000_060.0)
    header, payload, sig = token.split(".")
    claims = token_claims(token)
    claims["access"][0]["actions"] = ["pull", "push", "delete"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="signature"):
        signer.verify(f"{header}.{forged}.{sig}", now=1_000_001.0)
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    with pytest.raises(TokenError, match="ES256"):
        signer.verify(f"{none_header}.{payload}.", now=1_000_001.0)
    other = TokenSigner.load_or_create(DataPaths(tmp_path / "other"))
    with pytest.raises(TokenError, match="signature"):
        other.verify(token, now=1_000_001.0)
    for junk in ("", "a.b", "a.b.c", "!!.??.**"):
        with pytest.raises(TokenError):
            signer.verify(junk)


# The order of P-256's base point: (r, s) and (r, N - s) are both valid ECDSA signatures of the same message.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _signature(token: str) -> tuple[int, int]:
    raw = base64.urlsafe_b64decode(token.split(".")[2] + "==")
    assert len(raw) == 64
    return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")


def _with_signature(token: str, r: int, s: int) -> str:
    sig = base64.urlsafe_b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).rstrip(b"=").decode()
    return f"{token.rsplit('.', 1)[0]}.{sig}"


def test_a_malleated_ecdsa_signature_is_refused(signer: TokenSigner) -> None:
    # Several tokens: the signature's s is random, and every one of them must come out in the low form.
    for n in range(16):
        token, _, _ = signer.issue(f"u{n}", [Scope("repository", "p/r", ("pull",))], now=1_000_000.0)
        r, s = _signature(token)
        twin = _with_signature(token, r, P256_N - s)  # the same proof in its other spelling
        with pytest.raises(TokenError, match="signature"):
            signer.verify(twin, now=1_000_001.0)
        assert 0 < s <= P256_N // 2, "issued tokens carry the low-s signature"
        assert signer.verify(token, now=1_000_001.0).subject == f"u{n}"
    assert len(signer.verified) == 16  # the twins were not remembered either


def test_tokens_are_standard_jwts_that_pyjwt_reads(signer: TokenSigner) -> None:
    token, _, _ = signer.issue("robot$x", [Scope("repository", "p/r", ("pull",))])
    claims = pyjwt.decode(token, signer._public, algorithms=["ES256"], audience="harbor-registry",
                          issuer="harbor-token-issuer")
    assert set(claims) >= {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"}
    assert pyjwt.get_unverified_header(token) == {"alg": "ES256", "typ": "JWT", "kid": signer.kid}


def test_scope_parsing() -> None:
    assert parse_scopes(["repository:p/a/b:pull,push registry:catalog:*"]) == [
        Scope("repository", "p/a/b", ("pull", "push")), Scope("registry", "catalog", ("*",))]
    assert parse_scopes(["repository(plugin):p/r:pull"]) == [Scope("repository", "p/r", ("pull",))]
    for bad in ("repository:p/r", "nonsense", "user:x:pull"):
        with pytest.raises(ValueError, match="invalid scope"):
            parse_scopes([bad])



class _NoVerify:
    """Stands in for the public key: any signature check now fails loudly."""

    def verify(self, *args: object) -> None:
        raise AssertionError("the signature was checked again")


def test_a_verified_token_is_answered_from_memory_until_it_expires(signer: TokenSigner) -> None:
    token, _, _ = signer.issue("robot$x", [Scope("repository", "p/r", ("pull",))], now=1_000_000.0)
    first = signer.verify(token, now=1_000_001.0)
    assert len(signer.verified) == 1
    real, signer._public = signer._public, _NoVerify()  # type: ignore[assignment]
    assert signer.verify(token, now=1_000_059.0) == first
    signer._public = real
    # Expiry is honoured for a remembered token: it is refused, and forgotten.
    with pytest.raises(TokenError, match="expired"):
        signer.verify(token, now=1_000_060.0)
    assert len(signer.verified) == 0
    # A remembered token is not valid before its nbf either (a clock stepped back): the full check runs.
    later, _, _ = signer.issue("u", [], now=2_000_000.0)
    assert signer.verify(later, now=2_000_001.0).subject == "u"
    with pytest.raises(TokenError, match="not valid yet"):
        signer.verify(later, now=1_999_990.0)


def test_only_tokens_that_verify_are_remembered(signer: TokenSigner) -> None:
    token, _, _ = signer.issue("u", [Scope("repository", "p/r", ("pull",))], now=1_000_000.0)
    header, _, sig = token.split(".")
    claims = token_claims(token)
    claims["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for _ in range(2):
        with pytest.raises(TokenError, match="signature"):
            signer.verify(f"{header}.{forged}.{sig}", now=1_000_001.0)
    assert len(signer.verified) == 0


def _claims(expires_at: float) -> Claims:
    return Claims("u", (), expires_at)


def test_the_verified_token_cache_is_bounded_and_drops_the_oldest_first() -> None:
    cache = VerifiedTokens(max_entries=3)
    for n in range(5):
        cache.put(f"t{n}", _claims(2_000.0), 0.0, now=1_000.0)
    assert len(cache) == 3
    assert cache.get("t0", 1_000.0) is None and cache.get("t1", 1_000.0) is None
    assert all(cache.get(f"t{n}", 1_000.0) is not None for n in (2, 3, 4))
    # Putting a token again refreshes it rather than taking a second slot.
    cache.put("t2", _claims(2_000.0), 0.0, now=1_000.0)
    assert len(cache) == 3
    with pytest.raises(ValueError):
        VerifiedTokens(max_entries=0)


def test_the_verified_token_cache_drops_expired_entries_on_insert() -> None:
    cache = VerifiedTokens(max_entries=100)
    cache.put("old", _claims(1_100.0), 0.0, now=1_000.0)
    cache.put("newer", _claims(1_200.0), 0.0, now=1_000.0)
    cache.put("late", _claims(1_300.0), 0.0, now=1_150.0)  # "old" has expired by now: swept out
    assert len(cache) == 2
    assert cache.get("old", 1_050.0) is None
    assert cache.get("newer", 1_150.0) is not None
    assert cache.get("newer", 1_200.0) is None  # expired at lookup: gone
    assert len(cache) == 1

# -- the token service --------------------------------------------------------------------


def _token(appliance: Appliance, *scopes: str, auth: tuple[str, str] | None = None) -> requests.Response:
    return requests.get(f"{appliance.url}/service/token", params={"service": "harbor-registry", "scope": list(scopes)},
                        auth=auth, timeout=30)


def test_token_response_shape_and_admin_grants(appliance: Appliance, repo: str) -> None:
    r = _token(appliance, f"repository:{repo}:pull,push,delete", "registry:catalog:*", auth=appliance.admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"] and body["expires_in"] == 1800
    assert body["issued_at"].endswith("Z")
    claims = token_claims(body["token"])
    assert claims["sub"] == "admin"
    assert claims["access"] == [{"type": "repository", "name": repo, "actions": ["pull", "push", "delete"]},
                                {"type": "registry", "name": "catalog", "actions": ["*"]}]


def test_anonymous_token_grants_pull_on_public_projects_only(appliance: Appliance, repo: str) -> None:
    harbor = Harbor(appliance, appliance.admin)
    private = harbor.create_project(public=False)
    r = _token(appliance, f"repository:{repo}:pull,push", f"repository:{private}/x:pull", "registry:catalog:*")
    assert r.status_code == 200, r.text
    assert token_claims(r.json()["token"])["access"] == [{"type": "repository", "name": repo, "actions": ["pull"]}]


def test_token_authorizes_v2_requests_within_its_scope_only(appliance: Appliance, repo: str) -> None:
    harbor = Harbor(appliance, appliance.admin)
    private = harbor.create_project(public=False)
    token = _token(appliance, f"repository:{private}/img:pull", auth=appliance.admin).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{appliance.url}/v2/", headers=bearer, timeout=30).status_code == 200
    # pull granted (the repository does not exist: 404, not 401)
    r = requests.get(f"{appliance.url}/v2/{private}/img/tags/list", headers=bearer, timeout=30)
    assert r.status_code == 404, r.text
    # push not granted: 401 with a challenge naming the scope to ask for
    r = requests.post(f"{appliance.url}/v2/{private}/img/blobs/uploads/", headers=bearer, timeout=30)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == (f'Bearer realm="{appliance.url}/service/token",'
                                             f'service="harbor-registry",scope="repository:{private}/img:pull,push"')
    # another repository of the private project: not granted
    r = requests.get(f"{appliance.url}/v2/{private}/other/tags/list", headers=bearer, timeout=30)
    assert r.status_code == 401
    # the catalog needs its own scope
    assert requests.get(f"{appliance.url}/v2/_catalog", headers=bearer, timeout=30).status_code == 401


def test_token_service_refuses_wrong_credentials_bad_scope_and_post(appliance: Appliance, repo: str) -> None:
    r = _token(appliance, f"repository:{repo}:pull", auth=("admin", "wrong-password"))
    assert r.status_code == 401 and errors(r) == ["UNAUTHORIZED"]
    r = _token(appliance, "repository:nope")
    assert r.status_code == 400 and "invalid scope" in r.json()["errors"][0]["message"]
    r = requests.get(f"{appliance.url}/service/token", params={"service": "other"}, timeout=30)
    assert r.status_code == 400 and "unknown service" in r.json()["errors"][0]["message"]
    r = requests.post(f"{appliance.url}/service/token", data={"grant_type": "password"}, timeout=30)
    assert r.status_code == 405 and "GET" in r.headers["Allow"]


def test_expired_or_forged_bearer_is_refused_on_v2(appliance: Appliance) -> None:
    r = requests.get(f"{appliance.url}/v2/", headers={"Authorization": "Bearer abc.def.ghi"}, timeout=30)
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert r.headers["WWW-Authenticate"].startswith("Bearer realm=")
