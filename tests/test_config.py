"""mcp-gate.toml: defaults, resolved paths, secrets by reference, located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_gate.config import (
    ConfigFileError,
    SecretError,
    is_loopback,
    load_config,
    read_secret,
    split_listen,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mcp-gate.toml"
    path.write_text(text)
    return path


def test_defaults_and_resolved_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[auth]\ndev_issuer = true\n"))
    assert cfg.listen == ("127.0.0.1", 8765)
    assert cfg.public_url == "http://127.0.0.1:8765/mcp"
    assert cfg.audience == cfg.public_url
    assert cfg.issuer == "http://127.0.0.1:8765"
    assert cfg.policies == tmp_path / "policies.toml"
    assert cfg.data_dir == tmp_path / ".mcp-gate"


def test_connection_settings(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """
[auth]
issuer = "https://idp.example.com"
audience = "https://gate.example.com/mcp"
[connections.demo]
dsn = "postgresql://gate_reader@127.0.0.1:5432/demo"
password_env = "DEMO_DB_PASSWORD"
statement_timeout = "2s"
""",
        )
    )
    conn = cfg.model.connections["demo"]
    assert conn.max_rows == 1000 and conn.statement_timeout == 2.0
    assert cfg.audience == "https://gate.example.com/mcp"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://reader:s3cret@db/app",
        "host=db user=reader password=s3cret dbname=app",
    ],
)
def test_inline_passwords_are_refused_without_echoing_them(tmp_path: Path, dsn: str) -> None:
    path = write(tmp_path, f'[connections.demo]\ndsn = "{dsn}"\n')
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.line == 2 and "password_env" in problem.message
    assert "s3cret" not in str(info.value)


def test_dev_issuer_only_on_loopback(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nlisten = "0.0.0.0:8765"\n[auth]\ndev_issuer = true\n')
    with pytest.raises(ConfigFileError, match="loopback"):
        load_config(path)


def test_errors_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """[server]
listen = "nowhere"
[connections.demo]
dsn = "postgresql://r@h/d"
max_rows = 0
pasword_env = "X"
[connections."1bad"]
dsn = "x"
""",
    )
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    found = {(p.line, p.key) for p in info.value.problems}
    assert (2, "server.listen") in found
    assert (5, "connections.demo.max_rows") in found
    assert (6, "connections.demo.pasword_env") in found
    assert any(p.line == 7 and "start with a letter" in p.message for p in info.value.problems)
    typo = next(p for p in info.value.problems if p.line == 6)
    assert 'did you mean "password_env"' in typo.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_read_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATE_TEST_PW", "pw-from-env")
    assert read_secret("GATE_TEST_PW", None, tmp_path, "demo") == "pw-from-env"
    (tmp_path / "pw").write_text("pw-from-file\nignored\n")
    assert read_secret(None, "pw", tmp_path, "demo") == "pw-from-file"
    monkeypatch.delenv("GATE_TEST_PW")
    with pytest.raises(SecretError, match="GATE_TEST_PW is not set"):
        read_secret("GATE_TEST_PW", None, tmp_path, "demo")
    with pytest.raises(SecretError, match="cannot read password_file"):
        read_secret(None, "missing", tmp_path, "demo")
    assert read_secret(None, None, tmp_path, "demo") is None


def test_listen_parsing() -> None:
    assert split_listen("[::1]:9000") == ("::1", 9000)
    assert is_loopback("127.0.0.5") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    with pytest.raises(ValueError):
        split_listen("8765")


def test_password_in_a_url_query_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[connections.demo]\ndsn = "postgresql://r@db/app?password=s3cret"\n')
    with pytest.raises(ConfigFileError, match="password_env") as info:
        load_config(path)
    assert "s3cret" not in str(info.value)


# -- [server] store --------------------------------------------------------------------------


def test_store_keys(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """[server]
store = "postgresql://gate@db.internal:5432/gate"
store_password_env = "GATE_STORE_PASSWORD"
""",
        )
    )
    assert cfg.model.server.store == "postgresql://gate@db.internal:5432/gate"
    assert cfg.model.server.store_password_env == "GATE_STORE_PASSWORD"
    assert load_config(write(tmp_path, "")).model.server.store == "sqlite:///.mcp-gate/gate.db"


@pytest.mark.parametrize(
    "store",
    [
        "postgresql://gate:s3cret@db/gate",
        "postgres://gate:s3cret@db:5432/gate",
        "postgresql://gate@db/gate?password=s3cret",
    ],
)
def test_store_url_with_a_password_is_refused_without_echoing_it(
    tmp_path: Path, store: str
) -> None:
    path = write(tmp_path, f'[server]\nlisten = "127.0.0.1:9000"\nstore = "{store}"\n')
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert (problem.line, problem.key) == (3, "server.store")
    assert "store_password_env" in problem.message
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('store = "mysql://x@db/gate"', "sqlite:///FILE or postgresql://"),
        ('store = "sqlite:///"', "needs a file"),
        ('store_password_env = "X"', "need a postgresql:// store"),
        (
            'store = "postgresql://g@db/x"\nstore_password_env = "X"\nstore_password_file = "f"',
            "not both",
        ),
    ],
)
def test_bad_store_settings(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigFileError, match=message) as info:
        load_config(write(tmp_path, f"[server]\n{text}\n"))
    assert all(p.line is not None for p in info.value.problems)


def test_store_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_gate.store_target import StartupError, store_path, store_target

    cfg = load_config(write(tmp_path, '[server]\nstore = "sqlite:///state/gate.db"\n'))
    target = store_target(cfg)
    assert (target.kind, target.path, target.dsn) == ("sqlite", tmp_path / "state/gate.db", None)
    assert store_path(cfg) == tmp_path / "state/gate.db"

    (tmp_path / "store.pw").write_text("pw-from-file\n")
    cfg = load_config(
        write(
            tmp_path,
            '[server]\nstore = "postgresql://gate@db:5432/gate"\n'
            'store_password_file = "store.pw"\n',
        )
    )
    target = store_target(cfg)
    assert (target.kind, target.dsn, target.password) == (
        "postgresql",
        "postgresql://gate@db:5432/gate",
        "pw-from-file",
    )
    assert target.describe() == "gate@db:5432/gate" and "pw-from-file" not in repr(target)
    with pytest.raises(StartupError, match="PostgreSQL"):
        store_path(cfg)

    monkeypatch.delenv("GATE_TEST_STORE_PW", raising=False)
    cfg = load_config(
        write(
            tmp_path,
            '[server]\nstore = "postgres://gate@db/gate"\n'
            'store_password_env = "GATE_TEST_STORE_PW"\n',
        )
    )
    with pytest.raises(StartupError, match="GATE_TEST_STORE_PW is not set"):
        store_target(cfg)
    monkeypatch.setenv("GATE_TEST_STORE_PW", "pw-from-env")
    assert store_target(cfg).password == "pw-from-env"
