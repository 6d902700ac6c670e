"""A throwaway PostgreSQL (Debian's `postgresql` package: initdb + pg_ctl in a temporary folder, a
free loopback port) and an MLflow tracking server whose store is in it: what workers on many
machines share (docs/search.md, Many machines). Session fixtures, imported by conftest.py."""

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from conftest import free_port, serving

USER, PASSWORD = "lyricist", "s3cret"


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


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 (a password, as over a network), removed after the session.
    Missing in CI (CI=true) is a failure: .ci/run installs the package; elsewhere a skip."""
    bin_dir = pg_bin()
    if bin_dir is None:
        message = "PostgreSQL is not installed: apt-get install postgresql (Debian), as .ci/run does"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    folder = Path(tempfile.mkdtemp(prefix="lyricist-pg-"))  # in /tmp: the postgres user reaches it
    # The server refuses to run as root: as root, it runs as the package's `postgres` user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    (folder / "pw").write_text(PASSWORD)
    if as_user:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "pw", "postgres")
    port = free_port()
    run = lambda *args: subprocess.run(as_user + [str(bin_dir / args[0]), *args[1:]], check=True,  # noqa: E731
                                       capture_output=True, text=True)
    run("initdb", "-D", str(folder / "data"), "-U", USER, f"--pwfile={folder / 'pw'}", "-A", "scram-sha-256",
        "-E", "UTF8", "--no-sync")
    try:  # fsync off: a throwaway database need not survive a crash of this machine
        run("pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w", "start",
            "-o", f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off")
        yield Postgres(port)
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate",
                                  "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_on_postgres(postgres, tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with its store in the PostgreSQL above and served artifacts:
    (its URL, its database's URL)."""
    store = postgres.createdb("mlflow")
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store,
               "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    uri = f"http://127.0.0.1:{port}"
    with serving(command, f"{uri}/health", cwd=folder):
        yield uri, store
