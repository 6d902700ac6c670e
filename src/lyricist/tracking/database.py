"""A database that workers on other machines share (Optuna's `tune.storage`, or MLflow's store in
`logger.tracking_uri`), asked once before any study, run or trial: a wrong host, database,
password or driver is one line naming the key and what to check, not a traceback mid-search.

`postgresql://` and `postgresql+psycopg://` are the same URL: SQLAlchemy 2.1 (pinned) reads a
plain postgresql:// as psycopg 3, the driver pyproject.toml brings.
"""

from __future__ import annotations

import sqlalchemy
from sqlalchemy.exc import ArgumentError, DBAPIError

CONNECT_TIMEOUT = 10  # seconds: a host that drops packets fails here, not after libpq's default (none)


def shown(url: str) -> str:
    """`url` with its password hidden, for messages."""
    try:
        return sqlalchemy.make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def check(url: str, key: str, error: type[Exception] = ValueError) -> None:
    """Connect to `url` once (a SQLite file is left to its first use: connecting would create it)."""
    if url.startswith("sqlite"):
        return
    engine = None
    try:
        parsed = sqlalchemy.make_url(url)
        timeout = {"connect_timeout": CONNECT_TIMEOUT} if parsed.get_backend_name() == "postgresql" else {}
        engine = sqlalchemy.create_engine(parsed, connect_args=timeout, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except (ImportError, ArgumentError) as err:  # NoSuchModuleError is an ArgumentError
        raise error(f"{key}={shown(url)}: not a database URL with a driver here ({_first_line(err)}). "
                    "PostgreSQL's comes with the project: postgresql://user:password@host:5432/database; "
                    "another database needs its SQLAlchemy driver installed on every worker") from err
    except DBAPIError as err:
        raise error(f"{key}={shown(url)}: cannot connect ({_first_line(err.orig)}). Check that the server "
                    "runs and this machine reaches its host and port, that the database exists "
                    "(createdb), and the user and password") from err
    finally:
        if engine is not None:
            engine.dispose()


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__  # psycopg's message spans lines
    return text[:300]
