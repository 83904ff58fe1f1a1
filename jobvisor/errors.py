"""Exceptions raised by jobvisor. Every one derives from :class:`JobvisorError`."""

from __future__ import annotations

import psycopg


class JobvisorError(Exception):
    """Base class of every error that jobvisor raises on purpose."""


class ConfigError(JobvisorError, ValueError):
    """A setting, option or DSN is invalid."""


class InvalidJobError(JobvisorError, ValueError):
    """A job cannot be enqueued as given; nothing was stored."""


class UnknownJobTypeError(InvalidJobError):
    """The job type is not registered with the application."""


class DatabaseUnavailableError(JobvisorError, psycopg.OperationalError):
    """PostgreSQL could not be reached or started.

    It is also a ``psycopg.OperationalError``, so code that retries on lost connections
    treats both alike.
    """


class JobTimeoutError(JobvisorError):
    """A handler ran past its job type's timeout."""
