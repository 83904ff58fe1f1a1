"""HTTP client for job handlers: pooled keep-alive connections, retries and circuit breaking.

An :class:`HttpClient` wraps one ``requests.Session``. urllib3 retries each call on the
statuses in :class:`RetryPolicy` with exponential backoff and applies ``Retry-After``. A
call returns a ``requests.Response`` or raises :class:`HttpError`, which names the method,
the URL without its query string, the final status and the number of attempts.

Handlers run in forked worker processes. A client notices when it is used in a process other
than the one that built it and opens new connections there, and :func:`http_client` keeps
one client per process and service.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, Self
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from jobvisor.errors import ConfigError, JobvisorError

logger = logging.getLogger(__name__)

#: Methods that urllib3 retries without an opt-in: repeating them does not change the result.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

#: Statuses retried by default: timeout, rate limit and transient server errors.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

#: Number of hosts whose connection pools a session keeps (requests' own default).
POOL_CONNECTIONS = 10

#: Characters of a failed response's body quoted in the :class:`HttpError` message.
BODY_EXCERPT_CHARS = 200


class HttpError(JobvisorError):
    """An HTTP call failed: no response, or a failure status after the allowed retries.

    ``status`` is None when no response arrived (connection error or timeout), and
    ``response`` is then None too. ``url`` never contains the query string, user or password.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str,
        url: str,
        attempts: int,
        status: int | None = None,
        timed_out: bool = False,
        response: requests.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.attempts = attempts
        self.status = status
        self.timed_out = timed_out
        self.response = response


class Breaker(Protocol):
    """A circuit breaker: ``before_call`` raises when a call must not go out.

    :class:`HttpClient` calls ``before_call`` before each call and then exactly one of
    ``on_success`` or ``on_failure`` once the call, with all its retries, has finished.
    """

    def before_call(self) -> None: ...

    def on_success(self) -> None: ...

    def on_failure(self) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a call is retried.

    ``total`` is the maximum number of retries, so a call makes at most ``total + 1``
    attempts. Retry n (1, 2, ...) waits ``min(backoff_max_s, backoff_initial_s *
    backoff_factor ** (n - 1))`` seconds plus a random jitter of 0 to ``backoff_jitter_s``
    seconds. A response with a ``Retry-After`` header waits what the header says instead
    (0 for a date in the past), but at most ``max_retry_after_s`` seconds.
    """

    total: int = 5
    backoff_initial_s: float = 1.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 30.0
    backoff_jitter_s: float = 0.5
    max_retry_after_s: float = 120.0
    statuses: frozenset[int] = RETRY_STATUSES

    def __post_init__(self) -> None:
        if self.total < 0:
            raise ConfigError(f"RetryPolicy.total must be 0 or more, got {self.total}")
        for name in ("backoff_initial_s", "backoff_max_s", "backoff_jitter_s",
                     "max_retry_after_s"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"RetryPolicy.{name} must be 0 or more seconds, got {value}")
        if self.backoff_factor < 1:
            raise ConfigError(
                f"RetryPolicy.backoff_factor must be 1 or more, got {self.backoff_factor}"
            )
        object.__setattr__(self, "statuses", frozenset(self.statuses))

    def backoff_s(self, retry_number: int) -> float:
        """Return the wait in seconds before retry ``retry_number`` (1 for the first)."""
        exponent = max(0, retry_number - 1)
        # The loop stops at the cap, so a large retry number cannot overflow a float.
        delay = self.backoff_initial_s
        for _ in range(exponent):
            if delay >= self.backoff_max_s:
                break
            delay *= self.backoff_factor
        return min(self.backoff_max_s, delay) + random.uniform(0, self.backoff_jitter_s)


class _AttemptCounter:
    """Retries made by one call, shared by the Retry copies that urllib3 makes of it."""

    def __init__(self) -> None:
        self.retries = 0


class _CallRetry(Retry):
    """urllib3 Retry for one call: our backoff schedule, a capped Retry-After, and logging.

    urllib3 builds a new Retry with :meth:`new` after each failed attempt, so the extra
    attributes are copied there and the counter object is shared by all copies.
    """

    policy: RetryPolicy
    display_url: str
    counter: _AttemptCounter

    def new(self, **kw: Any) -> Self:
        retry = super().new(**kw)
        retry.policy = self.policy
        retry.display_url = self.display_url
        retry.counter = self.counter
        return retry

    def get_backoff_time(self) -> float:
        # urllib3 makes its first retry without waiting; this schedule waits from the first.
        return self.policy.backoff_s(len(self.history))

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        wait_s = self._wait_s(response)
        self.counter.retries += 1
        last = self.history[-1] if self.history else None
        if last is not None and last.status is not None:
            outcome = f"status {last.status}"
        elif last is not None and last.error is not None:
            outcome = f"error {last.error!r}"
        else:
            outcome = "a failed attempt"
        logger.warning(
            "retrying %s %s after %s: attempt %d of %d in %.2f s",
            last.method if last is not None else "request", self.display_url, outcome,
            self.counter.retries + 1, self.policy.total + 1, wait_s,
        )
        if wait_s > 0:
            time.sleep(wait_s)

    def _wait_s(self, response: BaseHTTPResponse | None) -> float:
        """Return the seconds to wait: Retry-After when present and valid, else backoff."""
        header = response.headers.get("Retry-After") if response is not None else None
        if header is None or not self.respect_retry_after_header:
            return self.get_backoff_time()
        try:
            # urllib3 returns 0, not a negative number, for a date in the past (read in
            # 2.8.0 and checked by test_urllib3_parses_past_date_as_zero on the installed one).
            seconds = self.parse_retry_after(header)
        except InvalidHeader:
            logger.warning(
                "ignoring invalid Retry-After header %r from %s, so the backoff schedule applies",
                header[:100], self.display_url,
            )
            return self.get_backoff_time()
        return min(seconds, self.policy.max_retry_after_s)


def _build_retry(policy: RetryPolicy, display_url: str, any_method: bool) -> _CallRetry:
    retry = _CallRetry(
        total=policy.total,
        status_forcelist=policy.statuses,
        allowed_methods=None if any_method else IDEMPOTENT_METHODS,
        respect_retry_after_header=True,
        # Return the last response when retries run out, so HttpError can report its status.
        raise_on_status=False,
    )
    retry.policy = policy
    retry.display_url = display_url
    retry.counter = _AttemptCounter()
    return retry


# requests passes no per-request retry setting to its adapter, and HTTPAdapter.send hands
# self.max_retries to urllib3. So HttpClient stores the Retry of the call in progress in
# this ContextVar, and the adapter's max_retries property returns it. A ContextVar is local
# to each thread, so concurrent calls through one session each get their own Retry and the
# session is never rebuilt to change retry settings.
_CALL_RETRY: ContextVar[Retry | None] = ContextVar("jobvisor_http_call_retry", default=None)


class _PerCallRetryAdapter(HTTPAdapter):
    """HTTPAdapter whose ``max_retries`` is the Retry of the call running on this thread."""

    @property  # type: ignore[override]
    def max_retries(self) -> Retry:
        call_retry = _CALL_RETRY.get()
        return self._default_retries if call_retry is None else call_retry

    @max_retries.setter
    def max_retries(self, value: Retry) -> None:
        self._default_retries = value


def redact_url(url: str) -> str:
    """Return ``url`` without user, password, query string and fragment, for messages."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def attempts_of(response: requests.Response) -> int:
    """Return the number of attempts made by the HttpClient call that returned ``response``.

    Returns 1 for a response that did not come through an HttpClient.
    """
    retry = getattr(response.raw, "retries", None)
    if isinstance(retry, _CallRetry):
        return retry.counter.retries + 1
    return 1


def _body_excerpt(response: requests.Response) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        return ""
    text = " ".join(text.split())
    if len(text) > BODY_EXCERPT_CHARS:
        text = text[:BODY_EXCERPT_CHARS] + "..."
    return text


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class HttpClient:
    """HTTP client with a keep-alive connection pool, retries and an optional breaker.

    Idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS, TRACE) are retried on the
    statuses in ``retries.statuses`` and on connection errors and read timeouts. POST and
    PATCH are retried only when the call passes ``idempotency_key`` (sent as the
    ``Idempotency-Key`` header) or ``retry_non_idempotent=True``. Connection failures
    before the request is sent are retried for every method, as urllib3 does.

    A call returns the response when its final status is below 500 and not 408, 429 or one
    of ``retries.statuses``. Otherwise, and on connection errors and timeouts, it raises
    :class:`HttpError`. With ``raise_for_status=True`` a call raises for 4xx statuses too.
    ``timeout_s`` applies to connecting and to each read of every attempt.

    The client is thread-safe. Used in a process other than the one that built it (after a
    fork), it opens new connections instead of sharing the parent's sockets.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        auth: Any = None,
        timeout_s: float = 60.0,
        pool_size: int = 100,
        retries: RetryPolicy = RetryPolicy(),
        breaker: Breaker | None = None,
        service: str = "general",
    ) -> None:
        if base_url is not None and urlsplit(base_url).scheme not in ("http", "https"):
            raise ConfigError(
                f"base_url {redact_url(base_url)!r} of service {service!r} is invalid: "
                "it must start with http:// or https://"
            )
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be more than 0 seconds, got {timeout_s}")
        if pool_size < 1:
            raise ConfigError(f"pool_size must be 1 or more, got {pool_size}")
        self.base_url = base_url.rstrip("/") if base_url is not None else None
        self.service = service
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self.retries = retries
        self.breaker = breaker
        self._headers = dict(headers or {})
        self._auth = auth
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._session = self._new_session()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = _PerCallRetryAdapter(
            pool_connections=POOL_CONNECTIONS, pool_maxsize=self.pool_size
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update(self._headers)
        session.auth = self._auth
        return session

    def _current_session(self) -> requests.Session:
        pid = os.getpid()
        if pid == self._pid:
            return self._session
        with self._lock:
            if pid != self._pid:
                # The parent's session is dropped, not closed: its sockets belong to the
                # parent, and this process only lets go of its copies of them.
                self._session = self._new_session()
                self._pid = pid
            return self._session

    def url_for(self, url: str) -> str:
        """Return ``url`` joined to ``base_url`` unless it is already absolute."""
        if urlsplit(url).scheme in ("http", "https"):
            return url
        if self.base_url is None:
            raise ConfigError(
                f"URL {url!r} is relative but the {self.service!r} client has no base_url. "
                "Pass an absolute http(s) URL or set base_url."
            )
        return f"{self.base_url}/{url.lstrip('/')}"

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        files: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
        retry_non_idempotent: bool = False,
        raise_for_status: bool = False,
        allow_redirects: bool = True,
    ) -> requests.Response:
        """Send one request, with retries, and return the response.

        Raises HttpError as described on the class, and whatever the breaker's
        ``before_call`` raises when the breaker is open, in which case nothing is sent.
        """
        method = method.upper()
        call_headers = dict(headers or {})
        if idempotency_key is not None:
            call_headers["Idempotency-Key"] = idempotency_key
        any_method = idempotency_key is not None or retry_non_idempotent
        timeout = self.timeout_s if timeout_s is None else timeout_s
        session = self._current_session()

        # Preparing first raises errors of the caller's own (bad URL, unserializable body)
        # before the breaker is asked, so they never count as failures of the service.
        prepared = session.prepare_request(requests.Request(
            method=method, url=self.url_for(url), headers=call_headers, params=params,
            json=json, data=data, files=files,
        ))
        display_url = redact_url(prepared.url or url)
        retry = _build_retry(self.retries, display_url, any_method)

        if self.breaker is not None:
            self.breaker.before_call()
        try:
            response = self._send(session, prepared, retry, timeout, allow_redirects)
        except requests.RequestException as exc:
            self._record(success=False)
            raise self._transport_error(method, display_url, retry, timeout, exc) from exc
        except Exception:
            self._record(success=False)
            raise

        attempts = retry.counter.retries + 1
        if self._is_failure_status(response.status_code):
            self._record(success=False)
            raise self._status_error(method, display_url, response, attempts, any_method)
        self._record(success=True)
        if raise_for_status and response.status_code >= 400:
            raise self._status_error(method, display_url, response, attempts, any_method)
        return response

    def _send(
        self,
        session: requests.Session,
        prepared: requests.PreparedRequest,
        retry: _CallRetry,
        timeout: float,
        allow_redirects: bool,
    ) -> requests.Response:
        token = _CALL_RETRY.set(retry)
        try:
            settings = session.merge_environment_settings(prepared.url, {}, None, None, None)
            return session.send(
                prepared, timeout=timeout, allow_redirects=allow_redirects, **settings
            )
        finally:
            _CALL_RETRY.reset(token)

    def _record(self, *, success: bool) -> None:
        if self.breaker is None:
            return
        if success:
            self.breaker.on_success()
        else:
            self.breaker.on_failure()

    def _is_failure_status(self, status: int) -> bool:
        return status >= 500 or status in (408, 429) or status in self.retries.statuses

    def _status_error(
        self,
        method: str,
        url: str,
        response: requests.Response,
        attempts: int,
        any_method: bool,
    ) -> HttpError:
        status = response.status_code
        tried = _plural(attempts, "attempt")
        message = f"{method} {url} failed with status {status} after {tried}."
        not_opted_in = method not in IDEMPOTENT_METHODS and not any_method
        if status in self.retries.statuses and attempts > 1:
            message += (
                " The retries are used up, so try again later or raise RetryPolicy.total "
                f"(now {self.retries.total})."
            )
        elif status in self.retries.statuses and not_opted_in:
            message += (
                f" {method} is retried only when the call passes idempotency_key= or "
                "retry_non_idempotent=True."
            )
        excerpt = _body_excerpt(response)
        if excerpt:
            message += f" Response body: {excerpt}"
        return HttpError(
            message, method=method, url=url, attempts=attempts, status=status,
            response=response,
        )

    def _transport_error(
        self,
        method: str,
        url: str,
        retry: _CallRetry,
        timeout: float,
        exc: requests.RequestException,
    ) -> HttpError:
        attempts = retry.counter.retries + 1
        reason: BaseException = exc
        if exc.args and isinstance(exc.args[0], BaseException):
            reason = exc.args[0]
        # After retries, urllib3 wraps the last error in MaxRetryError.reason.
        reason = getattr(reason, "reason", None) or reason
        timed_out = isinstance(exc, requests.Timeout) or (
            isinstance(reason, Urllib3TimeoutError)
            and not isinstance(reason, NewConnectionError)
        )
        if timed_out:
            message = (
                f"{method} {url} timed out after {_plural(attempts, 'attempt')} "
                f"(timeout {timeout} s per attempt). Raise timeout_s if the service is slow."
            )
        else:
            message = (
                f"{method} {url} failed after {_plural(attempts, 'attempt')} "
                f"without a response: {reason}"
            )
        return HttpError(message, method=method, url=url, attempts=attempts, timed_out=timed_out)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        """Send a GET request. Keyword arguments are those of :meth:`request`."""
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> requests.Response:
        """Send a HEAD request. Keyword arguments are those of :meth:`request`."""
        return self.request("HEAD", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> requests.Response:
        """Send an OPTIONS request. Keyword arguments are those of :meth:`request`."""
        return self.request("OPTIONS", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> requests.Response:
        """Send a DELETE request. Keyword arguments are those of :meth:`request`."""
        return self.request("DELETE", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> requests.Response:
        """Send a PUT request. Keyword arguments are those of :meth:`request`."""
        return self.request("PUT", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        """Send a POST request, retried only with idempotency_key or retry_non_idempotent."""
        return self.request("POST", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> requests.Response:
        """Send a PATCH request, retried only with idempotency_key or retry_non_idempotent."""
        return self.request("PATCH", url, **kwargs)

    def close(self) -> None:
        """Close the pooled connections of this process. A later call opens new ones."""
        self._current_session().close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


ClientFactory = Callable[..., HttpClient]

_factories: dict[str, ClientFactory] = {}
_clients: dict[tuple[int, str], tuple[HttpClient, dict[str, Any]]] = {}
_clients_lock = threading.Lock()


def _reset_clients_after_fork() -> None:
    # A thread of the parent may have held the lock at the fork, so the child gets a new one.
    # The parent's clients are dropped, not closed, because their sockets are the parent's.
    global _clients_lock
    _clients_lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_reset_clients_after_fork)


def register_client_factory(service: str, factory: ClientFactory) -> None:
    """Make :func:`http_client` build clients of ``service`` with ``factory(**overrides)``."""
    _factories[service] = factory


def http_client(service: str, **overrides: Any) -> HttpClient:
    """Return this process's client for ``service``, building it on the first call.

    Clients are cached per process id and service, so a forked worker never uses its
    parent's connections. A service registered with :func:`register_client_factory` (such
    as ``"openai"``) is built by its factory, any other as ``HttpClient(service=service,
    **overrides)``. Later calls may repeat the first call's overrides or pass none. Other
    overrides raise ConfigError, because the cached client could not honour them.
    """
    key = (os.getpid(), service)
    with _clients_lock:
        cached = _clients.get(key)
        if cached is not None:
            client, first_overrides = cached
            if overrides and overrides != first_overrides:
                raise ConfigError(
                    f"http_client({service!r}) was already built in this process with "
                    f"other settings ({sorted(first_overrides)}). Pass the same overrides or "
                    "none, or build a separate HttpClient."
                )
            return client
        factory = _factories.get(service)
        if factory is not None:
            client = factory(**overrides)
        else:
            client = HttpClient(service=service, **overrides)
        _clients[key] = (client, dict(overrides))
        return client
