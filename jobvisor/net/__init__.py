"""Outbound HTTP for job handlers: a retrying client, service presets and a request batcher."""

from jobvisor.net.batcher import (
    BatcherClosedError,
    BatcherForkedError,
    BatchSizeMismatchError,
    RequestBatcher,
)
from jobvisor.net.http import (
    Breaker,
    HttpClient,
    HttpError,
    RetryPolicy,
    attempts_of,
    http_client,
    register_client_factory,
)
from jobvisor.net.services import CloudinaryClient, openai_client

__all__ = [
    "BatchSizeMismatchError",
    "BatcherClosedError",
    "BatcherForkedError",
    "Breaker",
    "CloudinaryClient",
    "HttpClient",
    "HttpError",
    "RequestBatcher",
    "RetryPolicy",
    "attempts_of",
    "http_client",
    "openai_client",
    "register_client_factory",
]
