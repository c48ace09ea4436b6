"""Identity layer: JWT validation against a real local OIDC issuer, JWKS caching, the dev
issuer, and the HTTP auth helpers. No mocks: keys are real, HTTP goes over 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from starlette.applications import Starlette

from jwt_helpers import (
    FakeClock,
    FakeIdP,
    IdPServer,
    LocalServer,
    claims_for,
    hmac_token,
    raw_token,
    sign,
    unused_port_url,
)
from mcp_gate.auth import (
    DevIssuer,
    DevIssuerError,
    InvalidToken,
    JwtVerifier,
    dev_issuer_routes,
    extract_groups,
    protected_resource_metadata,
    resource_metadata_url,
    www_authenticate,
)
from mcp_gate.auth import errors as E
from mcp_gate.auth.jwks import parse_jwks
from mcp_gate.calls import Principal

AUDIENCE = "http://127.0.0.1:8765/mcp"


@pytest.fixture(scope="module")
def idp_server() -> Iterator[IdPServer]:
    server = IdPServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


@pytest.fixture(scope="module")
def rsa_key2() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec-1"})


@pytest.fixture
def idp(idp_server: IdPServer, rsa_key: RSAKey, ec_key: ECKey) -> FakeIdP:
    idp = idp_server.new_idp()
    idp.publish(rsa_key, ec_key)
    return idp


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@asynccontextmanager
async def verifier_for(issuer: str, **kwargs: Any) -> AsyncIterator[JwtVerifier]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield JwtVerifier(issuer, AUDIENCE, http=http, **kwargs)


async def refused(verifier: JwtVerifier, token: Any) -> str:
    """The reason `token` is refused; also checks the reason leaks nothing of the token."""
    with pytest.raises(InvalidToken) as info:
        await verifier.verify(token)
    reason = info.value.reason
    assert str(info.value) == reason
    if isinstance(token, str):
        for part in token.split("."):
            if len(part) >= 8:
                assert part not in reason
                assert part not in repr(info.value)
    return reason


# -- valid tokens ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_valid_rsa_token_gives_principal(idp: FakeIdP, rsa_key: RSAKey) -> None:
    token = sign(rsa_key, claims_for(idp.issuer, AUDIENCE, azp="cursor"), alg="RS256")
    async with verifier_for(idp.issuer) as verifier:
        principal = await verifier.verify(token)
    assert principal == Principal("alice", frozenset({"developers", "dba"}), "cursor")


@pytest.mark.anyio
@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256"])
async def test_rsa_algorithms(idp: FakeIdP, rsa_key: RSAKey, alg: str) -> None:
    token = sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg=alg)
    async with verifier_for(idp.issuer) as verifier:
        assert (await verifier.verify(token)).subject == "alice"


@pytest.mark.anyio
async def test_valid_ec_token_with_string_group_and_client_id(idp: FakeIdP, ec_key: ECKey) -> None:
    claims = claims_for(idp.issuer, AUDIENCE, groups="dba", client_id="svc-1")
    token = sign(ec_key, claims, alg="ES256")
    async with verifier_for(idp.issuer) as verifier:
        verified = await verifier.authenticate(token)
    assert verified.principal == Principal("alice", frozenset({"dba"}), "svc-1")
    assert verified.expires_at == claims["exp"]
    assert verified.claims["jti"] == claims["jti"]


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")  # signing side, in joserfc
async def test_eddsa_token(idp: FakeIdP) -> None:
    key = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
    idp.publish(key)
    async with verifier_for(idp.issuer) as verifier:
        for alg in ("EdDSA", "Ed25519"):
            token = sign(key, claims_for(idp.issuer, AUDIENCE), alg=alg)
            assert (await verifier.verify(token)).subject == "alice"


@pytest.mark.anyio
async def test_audience_list_must_contain_ours(idp: FakeIdP, rsa_key: RSAKey) -> None:
    ok = sign(rsa_key, claims_for(idp.issuer, AUDIENCE, aud=["other", AUDIENCE]), alg="RS256")
    bad = sign(rsa_key, claims_for(idp.issuer, AUDIENCE, aud=["other", "x"]), alg="RS256")
    async with verifier_for(idp.issuer) as verifier:
        assert (await verifier.verify(ok)).subject == "alice"
        assert await refused(verifier, bad) == E.WRONG_AUDIENCE


@pytest.mark.anyio
async def test_scopes_and_custom_groups_claim(idp: FakeIdP, rsa_key: RSAKey) -> None:
    claims = claims_for(
        idp.issuer,
        AUDIENCE,
        groups=None,
        scope="mcp:tools mcp:read",
        realm_access={"roles": ["dba", 7, ""]},
    )
    token = sign(rsa_key, claims, alg="RS256")
    async with verifier_for(idp.issuer, groups_claim="realm_access.roles") as verifier:
        verified = await verifier.authenticate(token)
    assert verified.principal.groups == frozenset({"dba"})
    assert verified.principal.client_id is None
    assert verified.scopes == ("mcp:tools", "mcp:read")


def test_group_claim_parsing() -> None:
    def groups(value: Any, name: str = "groups") -> frozenset[str]:
        return extract_groups({name: value}, name)

    assert groups(["a", "b", "a"]) == {"a", "b"}
    assert groups(["a", 1, None, {"x": 1}, ""]) == {"a"}
    # a string is one group, never split: splitting could invent groups
    assert groups("dba") == {"dba"}
    assert groups("Domain Admins") == {"Domain Admins"}
    assert groups("cn=dba,ou=groups") == {"cn=dba,ou=groups"}
    assert groups("") == frozenset()
    for junk in (None, 3, True, {"dba": True}):
        assert groups(junk) == frozenset()
    assert extract_groups({}, "groups") == frozenset()
    # namespaced top-level claims containing dots are found before any path walk
    assert groups(["x"], "https://example.com/groups") == {"x"}
    assert extract_groups({"a": {"b": ["x"]}}, "a.b") == {"x"}
    assert extract_groups({"a": ["x"]}, "a.b") == frozenset()


# -- refusals ----------------------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


CLAIM_FAILURES = [
    ("expired", {"exp": _now() - 120}, E.EXPIRED),
    ("not yet valid", {"nbf": _now() + 600}, E.NOT_YET_VALID),
    ("issued in the future", {"iat": _now() + 600}, E.ISSUED_IN_FUTURE),
    ("wrong audience", {"aud": "https://other.example/mcp"}, E.WRONG_AUDIENCE),
    ("wrong issuer", {"iss": "https://evil.example"}, E.WRONG_ISSUER),
    ("missing sub", {"sub": None}, "missing claim: sub"),
    ("empty sub", {"sub": ""}, "invalid claim: sub"),
    ("numeric sub", {"sub": 42}, "invalid claim: sub"),
    ("missing exp", {"exp": None}, "missing claim: exp"),
    ("missing aud", {"aud": None}, "missing claim: aud"),
    ("missing iss", {"iss": None}, "missing claim: iss"),
    ("string exp", {"exp": "tomorrow"}, "invalid claim: exp"),
    ("boolean nbf", {"nbf": True}, "invalid claim: nbf"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("overrides", "reason"),
    [(o, r) for _, o, r in CLAIM_FAILURES],
    ids=[name for name, _, _ in CLAIM_FAILURES],
)
async def test_claim_failures(
    idp: FakeIdP, rsa_key: RSAKey, overrides: dict[str, Any], reason: str
) -> None:
    claims = claims_for(idp.issuer, AUDIENCE)
    for name, value in overrides.items():
        if value is None:
            claims.pop(name)
        else:
            claims[name] = value
    token = sign(rsa_key, claims, alg="RS256")
    async with verifier_for(idp.issuer) as verifier:
        assert await refused(verifier, token) == reason


@pytest.mark.anyio
async def test_leeway(idp: FakeIdP, rsa_key: RSAKey) -> None:
    now = _now()
    slightly = sign(rsa_key, claims_for(idp.issuer, AUDIENCE, exp=now - 10), alg="RS256")
    early = sign(rsa_key, claims_for(idp.issuer, AUDIENCE, nbf=now + 10), alg="RS256")
    async with verifier_for(idp.issuer, leeway=30) as verifier:
        assert (await verifier.verify(slightly)).subject == "alice"
        assert (await verifier.verify(early)).subject == "alice"
    async with verifier_for(idp.issuer, leeway=0) as verifier:
        assert await refused(verifier, slightly) == E.EXPIRED
        assert await refused(verifier, early) == E.NOT_YET_VALID


@pytest.mark.anyio
async def test_bad_signature(idp: FakeIdP, rsa_key: RSAKey, rsa_key2: RSAKey) -> None:
    # signed by another key that claims the published kid
    forged = sign(rsa_key2, claims_for(idp.issuer, AUDIENCE), alg="RS256", kid=rsa_key.kid)
    # a valid token whose payload was swapped (escalating groups)
    good = sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg="RS256")
    other = sign(rsa_key, claims_for(idp.issuer, AUDIENCE, groups=["admin"]), alg="RS256")
    h, _, s = good.split(".")
    spliced = f"{h}.{other.split('.')[1]}.{s}"
    # a truncated signature
    truncated = good[:-10]
    async with verifier_for(idp.issuer) as verifier:
        for token in (forged, spliced, truncated):
            assert await refused(verifier, token) == E.BAD_SIGNATURE


@pytest.mark.anyio
async def test_embedded_keys_in_header_are_ignored(
    idp: FakeIdP, rsa_key: RSAKey, rsa_key2: RSAKey
) -> None:
    """`jwk` / `jku` / `x5u` headers (CVE-2018-0114 style) never supply the key."""
    attacker = rsa_key2.as_dict(private=False)
    claims = claims_for(idp.issuer, AUDIENCE, groups=["admin"])
    tokens = [
        sign(rsa_key2, claims, alg="RS256", kid=None, jwk=attacker),
        sign(rsa_key2, claims, alg="RS256", kid=rsa_key.kid, jwk=attacker),
        sign(rsa_key2, claims, alg="RS256", kid=rsa_key.kid, jku="http://127.0.0.1:9/jwks"),
        sign(rsa_key2, claims, alg="RS256", kid=rsa_key.kid, x5u="http://127.0.0.1:9/cert"),
    ]
    async with verifier_for(idp.issuer) as verifier:
        for token in tokens:
            assert await refused(verifier, token) == E.BAD_SIGNATURE


@pytest.mark.anyio
async def test_alg_none_refused(idp: FakeIdP, rsa_key: RSAKey) -> None:
    claims = claims_for(idp.issuer, AUDIENCE)
    async with verifier_for(idp.issuer) as verifier:
        for alg in ("none", "None", "NONE"):
            token = raw_token({"alg": alg, "kid": rsa_key.kid}, claims)
            assert await refused(verifier, token) == E.ALG_NOT_ALLOWED
        # a "none" token carrying some signature bytes
        token = raw_token({"alg": "none"}, claims, b"sig")
        assert await refused(verifier, token) == E.ALG_NOT_ALLOWED


@pytest.mark.anyio
async def test_hs256_key_confusion_refused(idp: FakeIdP, rsa_key: RSAKey) -> None:
    """An HS256 token "signed" with the issuer's public key as the HMAC secret."""
    claims = claims_for(idp.issuer, AUDIENCE, groups=["admin"])
    public_jwk = rsa_key.as_dict(private=False)
    secrets = [
        RSAKey.import_key(public_jwk).as_pem(private=False),
        json.dumps(public_jwk).encode(),
        json.dumps(idp.jwks()).encode(),
    ]
    async with verifier_for(idp.issuer) as verifier:
        for secret in secrets:
            for header in ({"alg": "HS256", "kid": rsa_key.kid}, {"alg": "HS256"}):
                token = hmac_token(secret, header, claims)
                assert await refused(verifier, token) == E.ALG_NOT_ALLOWED


@pytest.mark.anyio
async def test_symmetric_key_in_jwks_is_never_used(idp: FakeIdP) -> None:
    """Even an IdP publishing an `oct` key (and a verifier misconfigured to think about it)
    cannot make an HMAC token acceptable."""
    oct_key = OctKey.generate_key(256, parameters={"kid": "shared"})
    idp.extra_jwks.append(oct_key.as_dict(private=True))
    token = sign(oct_key, claims_for(idp.issuer, AUDIENCE), alg="HS256")
    async with verifier_for(idp.issuer) as verifier:
        assert await refused(verifier, token) == E.ALG_NOT_ALLOWED
    with pytest.raises(ValueError, match="HS256"):
        JwtVerifier(idp.issuer, AUDIENCE, algorithms=["RS256", "HS256"])
    with pytest.raises(ValueError, match="none"):
        JwtVerifier(idp.issuer, AUDIENCE, algorithms=["none"])
    with pytest.raises(ValueError):
        JwtVerifier(idp.issuer, AUDIENCE, algorithms=[])


@pytest.mark.anyio
async def test_algorithm_outside_configured_list(idp: FakeIdP, ec_key: ECKey) -> None:
    token = sign(ec_key, claims_for(idp.issuer, AUDIENCE), alg="ES256")
    async with verifier_for(idp.issuer, algorithms=["RS256"]) as verifier:
        assert await refused(verifier, token) == E.ALG_NOT_ALLOWED


@pytest.mark.anyio
async def test_key_type_must_match_algorithm(idp: FakeIdP, ec_key: ECKey, rsa_key: RSAKey) -> None:
    # an ES256 token pointing at the RSA key's kid finds no usable key
    token = sign(ec_key, claims_for(idp.issuer, AUDIENCE), alg="ES256", kid=rsa_key.kid)
    async with verifier_for(idp.issuer) as verifier:
        assert await refused(verifier, token) == E.UNKNOWN_KEY


@pytest.mark.anyio
async def test_garbage_tokens(idp: FakeIdP, rsa_key: RSAKey) -> None:
    valid = sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg="RS256")
    h, p, s = valid.split(".")
    garbage = [
        "",
        "   ",
        "garbage",
        "a.b",
        "a.b.c",
        "a.b.c.d.e",  # JWE-shaped
        f"{h}.{p}.{s}.x.y",
        "Bearer " + valid,
        "!!!.###.$$$",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",  # payload is not JSON: only after signature
        raw_token({"kid": "x"}, {}),  # no alg
        "bm90IGpzb24." + p + "." + s,  # header not JSON
        "W10." + p + "." + s,  # header is a JSON array
        valid + "x" * 20000,  # too long
        f"{h}.{p}.{s}\n{h}",
    ]
    async with verifier_for(idp.issuer) as verifier:
        for token in garbage:
            reason = await refused(verifier, token)
            assert reason in (E.MALFORMED, E.BAD_SIGNATURE, E.UNKNOWN_KEY), (token, reason)
        for token in garbage[:8]:
            assert await refused(verifier, token) == E.MALFORMED
        for junk in (None, 42, b"bytes"):
            assert await refused(verifier, junk) == E.MALFORMED


@pytest.mark.anyio
async def test_payload_not_an_object(idp: FakeIdP, rsa_key: RSAKey) -> None:
    from joserfc import jws

    token = jws.serialize_compact({"alg": "RS256", "kid": rsa_key.kid}, b"[1,2]", rsa_key)
    async with verifier_for(idp.issuer) as verifier:
        assert await refused(verifier, token) == E.MALFORMED


@pytest.mark.anyio
async def test_crit_and_unencoded_payload_refused(idp: FakeIdP, rsa_key: RSAKey) -> None:
    claims = claims_for(idp.issuer, AUDIENCE)
    crit = sign(rsa_key, claims, alg="RS256", crit=["b64"], b64=True)
    async with verifier_for(idp.issuer) as verifier:
        assert await refused(verifier, crit) == E.MALFORMED
        b64 = raw_token({"alg": "RS256", "kid": rsa_key.kid, "b64": False}, claims, b"x")
        assert await refused(verifier, b64) == E.MALFORMED


@pytest.mark.anyio
async def test_token_without_kid(idp_server: IdPServer, rsa_key: RSAKey, ec_key: ECKey) -> None:
    idp = idp_server.new_idp()
    idp.publish(rsa_key)
    token = sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg="RS256", kid=None)
    async with verifier_for(idp.issuer) as verifier:
        assert (await verifier.verify(token)).subject == "alice"
    # with two RSA keys published, a kid-less RS256 token is ambiguous
    idp.publish(RSAKey.import_key(dict(rsa_key.as_dict(private=False), kid="rsa-other")))
    async with verifier_for(idp.issuer) as verifier:
        assert await refused(verifier, token) == E.NO_KEY_ID


# -- JWKS fetching, caching, rotation ----------------------------------------------------------


@pytest.mark.anyio
async def test_unknown_kid_refetches_once(
    idp: FakeIdP, rsa_key: RSAKey, rsa_key2: RSAKey, clock: FakeClock
) -> None:
    token = sign(rsa_key2, claims_for(idp.issuer, AUDIENCE), alg="RS256")  # rsa-2: unpublished
    async with verifier_for(idp.issuer, clock=clock) as verifier:
        assert await refused(verifier, token) == E.UNKNOWN_KEY
        assert (idp.discovery_hits, idp.jwks_hits) == (1, 1)  # the first fetch, no second
        clock.advance(31)
        assert await refused(verifier, token) == E.UNKNOWN_KEY
        assert (idp.discovery_hits, idp.jwks_hits) == (1, 2)  # one refetch, discovery cached
        assert await refused(verifier, token) == E.UNKNOWN_KEY
        assert idp.jwks_hits == 2


@pytest.mark.anyio
async def test_key_rotation(
    idp: FakeIdP, rsa_key: RSAKey, rsa_key2: RSAKey, clock: FakeClock
) -> None:
    old = sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg="RS256")
    new = sign(rsa_key2, claims_for(idp.issuer, AUDIENCE, sub="bob"), alg="RS256")
    async with verifier_for(idp.issuer, clock=clock) as verifier:
        assert (await verifier.verify(old)).subject == "alice"
        assert idp.jwks_hits == 1
        clock.advance(60)
        idp.replace(rsa_key2)  # the IdP rotates: new kid, old key withdrawn
        assert (await verifier.verify(new)).subject == "bob"
        assert idp.jwks_hits == 2  # a single refetch
        assert (await verifier.verify(new)).subject == "bob"
        assert idp.jwks_hits == 2
        assert await refused(verifier, old) == E.UNKNOWN_KEY  # the retired key is gone
        assert idp.jwks_hits == 2  # and asking again was rate-limited


@pytest.mark.anyio
async def test_rotation_within_rate_limit_waits(
    idp: FakeIdP, rsa_key: RSAKey, rsa_key2: RSAKey, clock: FakeClock
) -> None:
    async with verifier_for(idp.issuer, clock=clock) as verifier:
        await verifier.verify(sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg="RS256"))
        idp.publish(rsa_key2)
        new = sign(rsa_key2, claims_for(idp.issuer, AUDIENCE), alg="RS256")
        clock.advance(10)  # < refetch_interval since the last fetch
        assert await refused(verifier, new) == E.UNKNOWN_KEY
        assert idp.jwks_hits == 1
        clock.advance(25)
        assert (await verifier.verify(new)).subject == "alice"
        assert idp.jwks_hits == 2


@pytest.mark.anyio
async def test_random_kid_burst_is_rate_limited(
    idp: FakeIdP, rsa_key: RSAKey, clock: FakeClock
) -> None:
    claims = claims_for(idp.issuer, AUDIENCE)
    async with verifier_for(idp.issuer, clock=clock) as verifier:
        await verifier.verify(sign(rsa_key, claims, alg="RS256"))
        assert idp.jwks_hits == 1
        clock.advance(120)
        idp.jwks_delay = 0.05  # the burst arrives while the refetch is in flight
        tokens = [sign(rsa_key, claims, alg="RS256", kid=uuid.uuid4().hex) for _ in range(50)]
        results = await asyncio.gather(
            *(verifier.verify(t) for t in tokens), return_exceptions=True
        )
        assert all(isinstance(r, InvalidToken) and r.reason == E.UNKNOWN_KEY for r in results)
        assert idp.jwks_hits == 2  # one shared refetch for 50 unknown kids
        for token in tokens[:10]:  # and sequential retries stay rate-limited
            assert await refused(verifier, token) == E.UNKNOWN_KEY
        assert idp.jwks_hits == 2
        assert idp.discovery_hits == 1


@pytest.mark.anyio
async def test_cold_start_concurrent_verifies_share_one_fetch(
    idp: FakeIdP, rsa_key: RSAKey, ec_key: ECKey
) -> None:
    idp.jwks_delay = 0.1
    tokens = [
        sign(
            rsa_key if i % 2 else ec_key,
            claims_for(idp.issuer, AUDIENCE, sub=f"u{i}"),
            alg="RS256" if i % 2 else "ES256",
        )
        for i in range(20)
    ]
    async with verifier_for(idp.issuer) as verifier:
        principals = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert [p.subject for p in principals] == [f"u{i}" for i in range(20)]
    assert (idp.discovery_hits, idp.jwks_hits) == (1, 1)


@pytest.mark.anyio
async def test_cancelled_caller_does_not_cancel_shared_fetch(idp: FakeIdP, rsa_key: RSAKey) -> None:
    idp.jwks_delay = 0.2
    token = sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg="RS256")
    async with verifier_for(idp.issuer) as verifier:
        first = asyncio.ensure_future(verifier.verify(token))
        second = asyncio.ensure_future(verifier.verify(token))
        await asyncio.sleep(0.05)
        first.cancel()
        assert (await second).subject == "alice"
        with pytest.raises(asyncio.CancelledError):
            await first
    assert idp.jwks_hits == 1


@pytest.mark.anyio
async def test_idp_unreachable_fails_closed(rsa_key: RSAKey, clock: FakeClock) -> None:
    issuer = unused_port_url()
    token = sign(rsa_key, claims_for(issuer, AUDIENCE), alg="RS256")
    async with verifier_for(issuer, clock=clock, timeout=2.0) as verifier:
        assert await refused(verifier, token) == E.KEYS_UNAVAILABLE
        assert await refused(verifier, token) == E.KEYS_UNAVAILABLE


@pytest.mark.anyio
async def test_idp_down_then_recovers(idp: FakeIdP, rsa_key: RSAKey, clock: FakeClock) -> None:
    idp.down = True
    token = sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg="RS256")
    async with verifier_for(idp.issuer, clock=clock) as verifier:
        assert await refused(verifier, token) == E.KEYS_UNAVAILABLE
        assert await refused(verifier, token) == E.KEYS_UNAVAILABLE
        assert idp.discovery_hits == 1  # retries are rate-limited too
        idp.down = False
        clock.advance(6)  # with nothing cached, retries come quickly (5 s)
        assert (await verifier.verify(token)).subject == "alice"


@pytest.mark.anyio
async def test_cache_ttl_and_stale_keys(idp: FakeIdP, rsa_key: RSAKey, clock: FakeClock) -> None:
    idp.cache_control = "public, max-age=120"
    token = sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg="RS256")
    async with verifier_for(idp.issuer, clock=clock) as verifier:
        await verifier.verify(token)
        clock.advance(100)
        await verifier.verify(token)
        assert idp.jwks_hits == 1  # still fresh
        clock.advance(30)
        await verifier.verify(token)
        assert idp.jwks_hits == 2  # max-age honoured
        # the IdP goes down: the last good keys keep working past their TTL ...
        idp.down = True
        clock.advance(200)
        assert (await verifier.verify(token)).subject == "alice"
        assert idp.jwks_hits == 3
        # ... but not forever
        clock.advance(86400)
        assert await refused(verifier, token) == E.KEYS_UNAVAILABLE


@pytest.mark.anyio
async def test_cache_control_is_clamped(idp: FakeIdP, rsa_key: RSAKey, clock: FakeClock) -> None:
    idp.cache_control = "max-age=0, no-cache"
    token = sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg="RS256")
    async with verifier_for(idp.issuer, clock=clock) as verifier:
        await verifier.verify(token)
        clock.advance(59)
        await verifier.verify(token)
        assert idp.jwks_hits == 1  # min TTL 60 s
        idp.cache_control = "max-age=999999"
        clock.advance(2)
        await verifier.verify(token)
        assert idp.jwks_hits == 2
        clock.advance(3601)
        await verifier.verify(token)
        assert idp.jwks_hits == 3  # max TTL 1 h


@pytest.mark.anyio
async def test_discovery_issuer_must_match(idp: FakeIdP, rsa_key: RSAKey) -> None:
    idp.advertised_issuer = "https://evil.example"
    token = sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg="RS256")
    async with verifier_for(idp.issuer) as verifier:
        assert await refused(verifier, token) == E.KEYS_UNAVAILABLE
    assert idp.jwks_hits == 0


@pytest.mark.anyio
async def test_fixed_jwks_uri_skips_discovery(idp: FakeIdP, rsa_key: RSAKey) -> None:
    token = sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg="RS256")
    async with verifier_for(idp.issuer, jwks_uri=idp.jwks_uri) as verifier:
        assert (await verifier.verify(token)).subject == "alice"
    assert (idp.discovery_hits, idp.jwks_hits) == (0, 1)


@pytest.mark.anyio
async def test_own_http_client(idp: FakeIdP, rsa_key: RSAKey) -> None:
    token = sign(rsa_key, claims_for(idp.issuer, AUDIENCE), alg="RS256")
    async with JwtVerifier(idp.issuer, AUDIENCE) as verifier:
        assert (await verifier.verify(token)).subject == "alice"


@pytest.mark.filterwarnings("ignore:Key size should be")  # generating the short key
def test_parse_jwks_keeps_only_public_signing_keys(rsa_key: RSAKey, ec_key: ECKey) -> None:
    small = RSAKey.generate_key(1024, parameters={"kid": "small"}).as_dict(private=False)
    enc = dict(ec_key.as_dict(private=False), kid="enc", use="enc")
    x25519 = OKPKey.generate_key("X25519", parameters={"kid": "x"}).as_dict(private=False)
    leaked = dict(rsa_key.as_dict(private=True), kid="leaked")
    document = {
        "keys": [
            rsa_key.as_dict(private=False),
            OctKey.generate_key(256, parameters={"kid": "oct"}).as_dict(private=True),
            small,
            enc,
            x25519,
            leaked,
            {"kty": "RSA", "kid": "broken", "n": "x"},
            "not a key",
        ]
    }
    index = parse_jwks(document)
    assert sorted(k.kid for k in index.keys) == ["leaked", "rsa-1"]
    assert not any(k.is_private for k in index.keys)


# -- dev issuer --------------------------------------------------------------------------------


PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def test_dev_issuer_key_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "state" / "nested"
    first = DevIssuer(data_dir, "http://127.0.0.1:8765", AUDIENCE)
    key_file = data_dir / "dev-issuer-key.json"
    assert key_file.exists()
    if os.name == "posix":
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "d" in json.loads(key_file.read_text())
    assert [p.name for p in data_dir.iterdir()] == ["dev-issuer-key.json"]  # no temp left

    second = DevIssuer(data_dir, "http://127.0.0.1:8765", AUDIENCE)
    assert second.kid == first.kid
    assert second.jwks() == first.jwks()

    jwks = first.jwks()
    assert len(jwks["keys"]) == 1
    public = jwks["keys"][0]
    assert not PRIVATE_MEMBERS & set(public)
    assert public["kid"] == first.kid
    assert (public["kty"], public["crv"], public["alg"], public["use"]) == (
        "EC",
        "P-256",
        "ES256",
        "sig",
    )
    assert ECKey.import_key(public).thumbprint() == first.kid  # RFC 7638


def test_dev_issuer_rejects_bad_key_file(tmp_path: Path) -> None:
    (tmp_path / "dev-issuer-key.json").write_text("{not json")
    with pytest.raises(DevIssuerError):
        DevIssuer(tmp_path, "http://127.0.0.1:8765", AUDIENCE)
    public_only = ECKey.generate_key("P-256").as_dict(private=False)
    (tmp_path / "dev-issuer-key.json").write_text(json.dumps(public_only))
    with pytest.raises(DevIssuerError):
        DevIssuer(tmp_path, "http://127.0.0.1:8765", AUDIENCE)


def test_dev_issuer_accepts_rsa_key(tmp_path: Path, rsa_key: RSAKey) -> None:
    (tmp_path / "dev-issuer-key.json").write_text(json.dumps(rsa_key.as_dict(private=True)))
    os.chmod(tmp_path / "dev-issuer-key.json", 0o600)
    issuer = DevIssuer(tmp_path, "http://127.0.0.1:8765", AUDIENCE)
    assert issuer.algorithm == "RS256"
    assert not PRIVATE_MEMBERS & set(issuer.jwks()["keys"][0])


def test_dev_issuer_discovery_document(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path, "http://127.0.0.1:8765/dev", AUDIENCE)
    doc = issuer.openid_configuration()
    assert doc["issuer"] == "http://127.0.0.1:8765/dev"
    assert doc["jwks_uri"] == "http://127.0.0.1:8765/dev/.well-known/jwks.json"
    assert doc["id_token_signing_alg_values_supported"] == ["ES256"]
    assert {"response_types_supported", "subject_types_supported"} <= set(doc)
    with pytest.raises(ValueError):
        issuer.mint("alice", ["dba"], ttl_seconds=0)
    with pytest.raises(ValueError):
        issuer.mint("", ["dba"])
    with pytest.raises(TypeError):
        issuer.mint("alice", "dba")


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["", "/dev-issuer"])
async def test_dev_issuer_over_http(tmp_path: Path, path: str) -> None:
    server = LocalServer()
    issuer_url = server.url + path
    # the key is created before the server exists: minting needs no running gateway
    token = DevIssuer(tmp_path, issuer_url, AUDIENCE).mint("carol", ["dba", "developers"])
    issuer = DevIssuer(tmp_path, issuer_url, AUDIENCE)
    server.start(Starlette(routes=dev_issuer_routes(issuer)))
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            verifier = JwtVerifier(issuer_url, AUDIENCE, http=http)
            principal = await verifier.verify(token)
            assert principal == Principal("carol", frozenset({"dba", "developers"}))

            r = await http.get(issuer_url + "/.well-known/jwks.json")
            assert r.status_code == 200
            assert not PRIVATE_MEMBERS & set(r.json()["keys"][0])
            if path:  # the RFC 8414-style inserted discovery path is served too
                r = await http.get(f"{server.url}/.well-known/openid-configuration{path}")
                assert r.json()["issuer"] == issuer_url

            wrong_aud = issuer.mint("carol", [], extra_claims={"aud": "http://elsewhere/mcp"})
            assert await refused(verifier, wrong_aud) == E.WRONG_AUDIENCE
            expired = issuer.mint("carol", [], extra_claims={"exp": int(time.time()) - 3600})
            assert await refused(verifier, expired) == E.EXPIRED
    finally:
        server.stop()

    # the issuer's own verifier needs no HTTP at all
    local = issuer.verifier()
    assert (await local.verify(token)).subject == "carol"
    other = DevIssuer(tmp_path / "other", issuer_url, AUDIENCE).mint("mallory", ["dba"])
    assert await refused(local, other) == E.UNKNOWN_KEY


# -- HTTP helpers ------------------------------------------------------------------------------


def test_www_authenticate() -> None:
    url = "https://gw.example/.well-known/oauth-protected-resource/mcp"
    assert www_authenticate(url) == f'Bearer resource_metadata="{url}"'
    # a description without an error code is not emitted (no credentials → no error)
    assert www_authenticate(url, description="x") == f'Bearer resource_metadata="{url}"'
    assert www_authenticate(url, error="invalid_token", description=E.EXPIRED) == (
        f'Bearer resource_metadata="{url}", error="invalid_token", '
        'error_description="token expired"'
    )
    value = www_authenticate(url, error="invalid_token", description='a "b"\r\nX-Evil: 1\\')
    assert "\r" not in value and "\n" not in value
    assert value.endswith('error_description="a ?b???X-Evil: 1?"')
    assert www_authenticate(url, error="insufficient_scope", scope="mcp:tools").endswith(
        'error="insufficient_scope", scope="mcp:tools"'
    )
    with pytest.raises(ValueError):
        www_authenticate(url, error='x", evil="1')
    assert www_authenticate('https://x/"\r\n') == 'Bearer resource_metadata="https://x/\\""'


def test_protected_resource_metadata() -> None:
    doc = protected_resource_metadata(
        "https://gw.example/mcp", ["https://idp.example"], ["mcp:tools"]
    )
    assert doc == {
        "resource": "https://gw.example/mcp",
        "authorization_servers": ["https://idp.example"],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp:tools"],
    }
    assert "scopes_supported" not in protected_resource_metadata("r", ["https://idp"], None)
    with pytest.raises(ValueError):
        protected_resource_metadata("r", [], None)
    assert resource_metadata_url("http://127.0.0.1:8765/mcp") == (
        "http://127.0.0.1:8765/.well-known/oauth-protected-resource/mcp"
    )
    assert resource_metadata_url("https://gw.example/") == (
        "https://gw.example/.well-known/oauth-protected-resource"
    )
    assert resource_metadata_url("https://gw.example") == (
        "https://gw.example/.well-known/oauth-protected-resource"
    )
