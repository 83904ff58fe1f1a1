"""Finding the database: ``--dsn``, then ``JOBVISOR_DSN``, then ``DATABASE_URL``, else embedded."""

from __future__ import annotations

import os

import psycopg
from psycopg.conninfo import conninfo_to_dict

from jobvisor.errors import ConfigError


def configured_dsn(explicit: str | None = None) -> str | None:
    """Return the DSN the user configured, validated, or None when the embedded server applies."""
    for source, value in (
        ("--dsn", explicit),
        ("JOBVISOR_DSN", os.environ.get("JOBVISOR_DSN")),
        ("DATABASE_URL", os.environ.get("DATABASE_URL")),
    ):
        if value is not None and value.strip():
            validate_dsn(value, source=source)
            return value.strip()
    return None


def validate_dsn(dsn: str, *, source: str = "dsn") -> None:
    """Raise :class:`ConfigError` unless libpq can parse ``dsn``."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as error:
        raise ConfigError(
            f"{source} {redact(dsn)!r} is not a valid PostgreSQL connection string ({error}); "
            "use a URI such as postgresql://user@host:5432/dbname or key=value pairs"
        ) from None
    # libpq accepts any text as a port when parsing and fails only when connecting.
    for port in str(params.get("port", "")).split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(
                f"{source} {redact(dsn)!r} has port {port!r}; a port is a number from 1 to 65535"
            )


def redact(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``***``, for messages and logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return dsn if "@" not in dsn else "<unparsable DSN>"
    if "password" not in params:
        return dsn
    params["password"] = "***"
    return " ".join(f"{key}={value}" for key, value in params.items())
