"""jobvisor: background jobs for Python on PostgreSQL, run by a supervisor of worker processes."""

from jobvisor.app import App
from jobvisor.config import Settings
from jobvisor.errors import (
    ConfigError,
    DatabaseUnavailableError,
    InvalidJobError,
    JobTimeoutError,
    JobvisorError,
    UnknownJobTypeError,
)
from jobvisor.workers.context import JobContext

__all__ = [
    "App",
    "ConfigError",
    "DatabaseUnavailableError",
    "InvalidJobError",
    "JobContext",
    "JobTimeoutError",
    "JobvisorError",
    "Settings",
    "UnknownJobTypeError",
]
__version__ = "0.1.0"
