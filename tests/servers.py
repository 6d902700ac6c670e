"""Servers the tests start on loopback, always stopped: any server process (`serving`), a
throwaway PostgreSQL (Debian's `postgresql` package: initdb + pg_ctl in a temporary folder) and
an MLflow tracking server whose store is in it, as workers on many machines share them
(docs/search.md, Many machines). conftest.py re-exports them; benchmarks/many_workers.py too."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import requests

USER, PASSWORD = "lyricist", "s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(command: list[str], ready_url: str, cwd: Path, env=None, timeout: float = 180):
    """Start a server process, wait until `ready_url` answers, and always stop it."""
    server = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if requests.get(ready_url, timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert server.poll() is None and time.time() < deadline, f"{command[:3]} did not start"
            time.sleep(0.5)
        yield
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's programs (Debian keeps them off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@dataclass
class Postgres:
    port: int

    def url(self, database: str, scheme: str = "postgresql", password: str = PASSWORD) -> str:
        return f"{scheme}://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def createdb(self, name: str) -> str:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def throwaway_postgres(bin_dir: Path):
    """A PostgreSQL server on 127.0.0.1 with a password (as over a network), removed after."""
    folder = Path(tempfile.mkdtemp(prefix="lyricist-pg-"))  # in /tmp: the postgres user reaches it
    # The server refuses to run as root: as root, it runs as the package's `postgres` user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    (folder / "pw").write_text(PASSWORD)
    if as_user:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "pw", "postgres")
    port = free_port()

    def pg(*args: str) -> None:
        subprocess.run(as_user + [str(bin_dir / args[0]), *args[1:]], check=True, capture_output=True)

    try:
        pg("initdb", "-D", str(folder / "data"), "-U", USER, f"--pwfile={folder / 'pw'}", "-A", "scram-sha-256",
           "-E", "UTF8", "--no-sync")
        # fsync off: a throwaway database need not survive a crash of this machine.
        pg("pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w", "start",
           "-o", f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off")
        yield Postgres(port)
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate",
                                  "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(store: str, folder: Path):
    """`mlflow server` on 127.0.0.1 with its runs in `store` and its artifacts served from `folder`."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store,
               "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    uri = f"http://127.0.0.1:{port}"
    with serving(command, f"{uri}/health", cwd=folder):
        yield uri


@pytest.fixture(scope="session")
def postgres():
    """Missing in CI (CI=true) is a failure, not a skip: .ci/run installs the package."""
    bin_dir = pg_bin()
    if bin_dir is None:
        message = "PostgreSQL is not installed: apt-get install postgresql (Debian), as .ci/run does"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    with throwaway_postgres(bin_dir) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_on_postgres(postgres, tmp_path_factory):
    """(the server's URL, its store's URL): a plain postgresql:// URL, as the docs write it."""
    store = postgres.createdb("mlflow")
    with mlflow_server(store, tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri, store
