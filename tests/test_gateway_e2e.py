"""The gateway end to end: `mcp-gate serve` in a real process, SDK clients over real HTTP (both
protocol eras) and stdio, a real PostgreSQL with the demo's sample data, real JWTs."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from mcp import Client, StdioServerParameters

from gateway_helpers import MCP_GATE, Gateway, text_of, write_config
from jwt_helpers import b64url, raw_token
from mcp_gate.auth import DevIssuer
from mcp_gate.demo.embedded import free_port
from pgserver import admin_execute, run_sync
from shop_helpers import Shop, sample_policy, sample_shop, shop_gateway

pytestmark = pytest.mark.slow
ERAS = ["legacy", "auto"]


@pytest.fixture(scope="module")
def shop(pg_dsn: str) -> Iterator[Shop]:
    """The demo's sample database plus a 1M-row table and a canary the refusals must not touch."""
    with sample_shop(pg_dsn, "test_gateway") as shop:
        admin_execute(
            shop.dsn,
            "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v "
            "FROM generate_series(1, 1000000) g",
            f'GRANT SELECT ON big TO "{shop.reader_role}"',
            "CREATE TABLE canary (n int)",
            "INSERT INTO canary VALUES (1)",
            f'GRANT SELECT ON canary TO "{shop.reader_role}"',
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON canary TO "{shop.writer_role}"',
        )
        yield shop


@pytest.fixture(scope="module")
def gateway(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # The sample policy, waiting 1 s for approvers instead of 2 minutes, and with "bulk
    # export" above the million-row table that the truncation test reads (it holds that read
    # for review otherwise: tests/test_estimated_rows.py covers the rule).
    bulk = "estimated_rows = { gt = 10000 }"
    policy = sample_policy(wait='"1s"')
    assert bulk in policy
    policy = policy.replace(bulk, "estimated_rows = { gt = 10000000 }")
    with shop_gateway(shop, tmp_path_factory.mktemp("gateway"), policy) as gw:
        yield gw


@pytest.fixture(scope="module")
def agent_token(gateway: Gateway) -> str:
    return gateway.token("agent", "developers")


@pytest.fixture(scope="module")
def dba_token(gateway: Gateway) -> str:
    return gateway.token("alice", "dba")


def state(shop: Shop) -> tuple[int, int, int, list[str]]:
    """Row counts and tables that a denied statement must leave alone."""

    async def read() -> tuple[int, int, int, list[str]]:
        conn = await asyncpg.connect(shop.dsn)
        try:
            orders = await conn.fetchval("SELECT count(*) FROM orders")
            customers = await conn.fetchval("SELECT count(*) FROM customers")
            canary = await conn.fetchval("SELECT sum(n) FROM canary")
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
            return orders, customers, canary, [r[0] for r in tables]
        finally:
            await conn.close()

    return run_sync(read)


# -- reads ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ERAS)
async def test_select_returns_rows_with_verdict(gateway: Gateway, agent_token: str, mode: str):
    async with gateway.client(agent_token, mode) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert tools == {"sql_query", "sql_list_tables", "sql_describe_table", "sql_explain"}
        result = await client.call_tool(
            "sql_query", {"sql": "SELECT id, status FROM orders ORDER BY id LIMIT 3"}
        )
        assert not result.is_error, text_of(result)
        data = result.structured_content
        assert [c["name"] for c in data["columns"]] == ["id", "status"]
        assert data["rows"] == [[1, "paid"], [2, "shipped"], [3, "cancelled"]]
        assert data["row_count"] == 3 and data["truncated"] is False
        assert "3 rows" in text_of(result)
        assert result.meta["io.mcp-gate/decision"] == {"decision": "allow", "reasons": ["reads"]}


@pytest.mark.anyio
async def test_catalog_tools(gateway: Gateway, agent_token: str):
    async with gateway.client(agent_token) as client:
        listed = await client.call_tool("sql_list_tables", {})
        names = {t["name"] for t in listed.structured_content["tables"]}
        assert {"customers", "orders", "payments"} <= names
        described = await client.call_tool("sql_describe_table", {"table": "orders"})
        columns = [c["name"] for c in described.structured_content["columns"]]
        assert columns[:2] == ["id", "customer_id"]
        missing = await client.call_tool("sql_describe_table", {"table": "nope; DROP TABLE x"})
        assert missing.is_error


@pytest.mark.anyio
async def test_max_rows_truncates_a_million_rows(gateway: Gateway, agent_token: str):
    async with gateway.client(agent_token) as client:
        started = time.monotonic()
        result = await client.call_tool("sql_query", {"sql": "SELECT * FROM big"})
        elapsed = time.monotonic() - started
        assert not result.is_error, text_of(result)
        assert result.structured_content["row_count"] == 100  # max_rows in the test config
        assert result.structured_content["truncated"] is True
        assert elapsed < 5, f"took {elapsed:.1f}s: the table was loaded, not streamed"
        smaller = await client.call_tool("sql_query", {"sql": "SELECT * FROM big", "max_rows": 7})
        assert smaller.structured_content["row_count"] == 7


@pytest.mark.anyio
async def test_statement_timeout_cancels_a_long_query(gateway: Gateway, agent_token: str):
    slow = "SELECT count(*) FROM generate_series(1, 2000000000)"
    async with gateway.client(agent_token) as client:
        started = time.monotonic()
        result = await client.call_tool("sql_query", {"sql": slow})
        assert result.is_error
        assert "statement timeout" in text_of(result)
        assert time.monotonic() - started < 10


# -- refusals -------------------------------------------------------------------------------

HOSTILE = [
    "DELETE FROM orders",
    "/* harmless */ DELETE FROM orders",
    "SELECT 1; DROP TABLE orders",
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
    "DO $$BEGIN DELETE FROM orders; END$$",
    "SET ROLE postgres",
    "COPY orders TO PROGRAM 'cat > /tmp/x'",
    "EXPLAIN ANALYZE DELETE FROM orders",
    "LISTEN x",
    "SAVEPOINT s",
    "CHECKPOINT",
    "SELECT 'a'; DELETE FROM canary",
    "SELECT $q$;$q$; DELETE FROM canary",
    "SELECT E'\\\\'; DELETE FROM canary; --'",
    "COMMIT; INSERT INTO canary VALUES (100)",
    "SET TRANSACTION READ WRITE; INSERT INTO canary VALUES (100)",
    "SELECT pg_sleep(30)",
    "SELECT lo_import('/etc/passwd')",
    "SELECT query_to_xml('select * from customers', true, true, '')",
    "SELECT * FROM customers FOR UPDATE",
    "SELECT * INTO stolen FROM customers",
    "TRUNCATE canary",
    "DROP TABLE canary",
    "GRANT ALL ON customers TO PUBLIC",
    "UPDATE canary SET n = 100",
    "UPDATE canary SET n = 100 WHERE true",
    "selec * from orders",
    "SELECT 1\x00; DELETE FROM canary",
]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ERAS)
async def test_hostile_statements_never_touch_the_database(
    gateway: Gateway, agent_token: str, dba_token: str, shop: Shop, mode: str
):
    before = state(shop)
    for token in (agent_token, dba_token):
        async with gateway.client(token, mode) as client:
            for sql in HOSTILE:
                result = await client.call_tool("sql_query", {"sql": sql})
                assert result.is_error, f"{sql!r} was not refused: {text_of(result)}"
                verdict = result.meta["io.mcp-gate/decision"]["decision"]
                assert verdict in ("deny", "review"), sql
                text = text_of(result)
                assert "mcp-gate:" in text and ("rule" in text or "default" in text), text
    assert state(shop) == before


@pytest.mark.anyio
async def test_quoting_tricks_are_read_as_postgresql_reads_them(gateway: Gateway, agent_token):
    """Text that only looks like two statements is one string literal: allowed, harmless."""
    async with gateway.client(agent_token) as client:
        for sql, value in (
            ("SELECT E'\\'; DELETE FROM canary; --' AS v", "'; DELETE FROM canary; --"),
            ("SELECT $x$; DELETE FROM canary; $x$ AS v", "; DELETE FROM canary; "),
            ("SELECT '/* ; DELETE FROM canary */' AS v", "/* ; DELETE FROM canary */"),
        ):
            result = await client.call_tool("sql_query", {"sql": sql})
            assert not result.is_error, text_of(result)
            assert result.structured_content["rows"] == [[value]]


@pytest.mark.anyio
async def test_refusal_names_the_rule(gateway: Gateway, agent_token: str):
    async with gateway.client(agent_token) as client:
        result = await client.call_tool("sql_query", {"sql": "DELETE FROM orders"})
        text = text_of(result)
        assert result.is_error
        assert 'denied by policy rule "never unbounded"' in text and "no_where" in text
        assert result.meta["io.mcp-gate/decision"]["reasons"][:1] == ["never unbounded"]
        held = await client.call_tool(
            "sql_query", {"sql": "DELETE FROM orders WHERE status = 'cancelled'"}
        )
        assert held.is_error
        assert "still waiting for approval by dba" in text_of(held)
        verdict = held.meta["io.mcp-gate/decision"]
        assert verdict["decision"] == "review" and verdict["approval_id"].startswith("ap_")


@pytest.mark.anyio
async def test_allowed_write_runs_on_the_write_path(gateway: Gateway, dba_token: str, shop: Shop):
    async with gateway.client(dba_token) as client:
        result = await client.call_tool(
            "sql_query", {"sql": "UPDATE canary SET n = n + 1 WHERE n = 1 RETURNING n"}
        )
        assert not result.is_error, text_of(result)
        assert result.structured_content["affected_rows"] == 1
        assert result.structured_content["rows"] == [[2]]
        assert result.meta["io.mcp-gate/decision"]["reasons"][:1] == ["DBAs write directly"]
    try:
        assert state(shop)[2] == 2
    finally:
        admin_execute(shop.dsn, "UPDATE canary SET n = 1")


@pytest.mark.anyio
async def test_bad_arguments_name_the_argument(gateway: Gateway, agent_token: str):
    async with gateway.client(agent_token) as client:
        result = await client.call_tool("sql_query", {"sql": 42})
        assert result.is_error and "argument 'sql'" in text_of(result)
        result = await client.call_tool("sql_query", {})
        assert result.is_error and "'sql' is a required property" in text_of(result)
        result = await client.call_tool("sql_query", {"sql": "select 1", "rows": 3})
        assert result.is_error and "rows" in text_of(result)
        result = await client.call_tool("no_such_tool", {})
        assert result.is_error and "unknown tool" in text_of(result)


# -- identity -------------------------------------------------------------------------------


def post(gateway: Gateway, token: str | None, body: bytes | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = body or json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}
    ).encode()  # fmt: skip
    return httpx.post(gateway.url, content=body, headers=headers, timeout=30)


def forged_tokens(gateway: Gateway) -> dict[str, str]:
    issuer = DevIssuer(gateway.folder / "state", gateway.url.rsplit("/mcp", 1)[0], gateway.url)
    other = DevIssuer(gateway.folder / "other-key", issuer.issuer, gateway.url)
    now = int(time.time())
    valid = issuer.mint("mallory", ["dba"])
    header, payload, _sig = valid.split(".")
    claims = json.loads(__import__("base64").urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return {
        "expired": issuer.mint("mallory", ["dba"], extra_claims={"exp": now - 3600}),
        "wrong audience": issuer.mint("mallory", ["dba"], extra_claims={"aud": "http://x/mcp"}),
        "wrong issuer": issuer.mint("mallory", ["dba"], extra_claims={"iss": "http://evil"}),
        "bad signature": f"{header}.{payload}.{b64url(b'x' * 64)}",
        "alg none": raw_token({"alg": "none", "typ": "JWT"}, claims),
        "unknown kid": other.mint("mallory", ["dba"]),
        "garbage": "not-a-token",
    }


def test_missing_token_gets_a_challenge_without_error(gateway: Gateway):
    response = post(gateway, None)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert (
        'resource_metadata="' in challenge and "/.well-known/oauth-protected-resource" in challenge
    )
    assert "error=" not in challenge


def test_bad_tokens_are_refused(gateway: Gateway):
    for name, token in forged_tokens(gateway).items():
        response = post(gateway, token)
        assert response.status_code == 401, name
        assert 'error="invalid_token"' in response.headers["www-authenticate"], name
        assert token not in response.text and token not in response.headers["www-authenticate"]


def test_valid_token_is_accepted(gateway: Gateway, agent_token: str):
    response = post(gateway, agent_token)
    assert response.status_code == 200, response.text


def test_protected_resource_metadata(gateway: Gateway):
    base = gateway.url.rsplit("/mcp", 1)[0]
    for path in (
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ):
        doc = httpx.get(base + path, timeout=10).json()
        assert doc["resource"] == gateway.url
        assert doc["authorization_servers"] == [base]
    discovery = httpx.get(base + "/.well-known/openid-configuration", timeout=10).json()
    jwks = httpx.get(discovery["jwks_uri"], timeout=10).json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"])


def test_malformed_json_rpc_keeps_serving(gateway: Gateway, agent_token: str):
    for body in (b"{not json", b"[]", b'{"jsonrpc": "2.0"}', b"\xff\xfe", b"x" * 5_000_000):
        response = post(gateway, agent_token, body)
        assert 400 <= response.status_code < 500, (body[:20], response.status_code)
    assert post(gateway, agent_token).status_code == 200
    assert gateway.process is not None and gateway.process.poll() is None


# -- secrets --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_secrets_never_leave_the_gateway(gateway: Gateway, agent_token: str, shop: Shop):
    async with gateway.client(agent_token) as client:
        for sql in (
            "SELECT current_setting('application_name')",
            "SELECT * FROM pg_stat_activity",
            "SELECT nosuchcolumn FROM orders",
        ):
            result = await client.call_tool("sql_query", {"sql": sql})
            for secret in shop.secrets:
                assert secret not in text_of(result)
                assert secret not in json.dumps(result.structured_content or {})
    log = gateway.stderr()
    for secret in (*shop.secrets, agent_token):
        assert secret not in log


def test_wrong_database_password_fails_clearly_without_echoing_it(shop: Shop, tmp_path: Path):
    wrong = "Wr0ng-" + secrets.token_urlsafe(8)
    config = write_config(tmp_path, port=free_port(), dsn=shop.reader, write_dsn=None)
    env = {**os.environ, "GATE_TEST_READER_PW": wrong}
    done = subprocess.run(
        [*MCP_GATE, "serve", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "cannot start" in done.stderr and "demo" in done.stderr
    assert wrong not in done.stdout + done.stderr


def test_port_in_use_and_bad_config(gateway: Gateway, tmp_path: Path):
    busy = tmp_path / "busy.toml"  # the same listen address as the running gateway
    busy.write_text(gateway.config.read_text().replace('data_dir = "state"', 'data_dir = "s2"'))
    done = subprocess.run(
        [*MCP_GATE, "serve", "--config", str(busy)],
        env=gateway.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "already in use" in done.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = "nowhere"\n[conections.x]\ndsn = "y"\n')
    done = subprocess.run(
        [*MCP_GATE, "serve", "--config", str(bad)],
        env=gateway.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "bad.toml:2" in done.stderr and "bad.toml:3" in done.stderr


# -- stdio ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ERAS)
async def test_stdio(gateway: Gateway, shop: Shop, mode: str):
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_gate", "serve", "--stdio", "--config", str(gateway.config)],
        env=gateway.env,
    )
    before = state(shop)
    async with Client(params, mode=mode, cache=None) as client:
        result = await client.call_tool("sql_query", {"sql": "SELECT count(*) AS n FROM orders"})
        assert not result.is_error, text_of(result)
        assert result.structured_content["rows"] == [[5000]]
        refused = await client.call_tool("sql_query", {"sql": "DELETE FROM orders"})
        assert refused.is_error and "never unbounded" in text_of(refused)
    assert state(shop) == before


def test_foreign_origin_is_refused(gateway: Gateway, agent_token: str):
    """DNS-rebinding protection: a browser page on another origin cannot drive the gateway."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    headers = {
        "Authorization": f"Bearer {agent_token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Origin": "http://evil.example",
    }
    response = httpx.post(gateway.url, content=body, headers=headers, timeout=30)
    assert response.status_code == 403
    headers["Origin"] = gateway.url.rsplit("/mcp", 1)[0]  # the gateway's own origin
    same = httpx.post(gateway.url, content=body, headers=headers, timeout=30)
    assert same.status_code != 403
