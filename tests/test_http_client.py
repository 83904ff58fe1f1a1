"""Tests of HttpClient and the service clients against HTTP servers on 127.0.0.1.

Each test starts a ThreadingHTTPServer on a free port in a thread. The server replies from a
script per path, records when each request arrived (time.monotonic, the clock the client's
sleeps run on) and counts TCP connections. No test sends traffic to any other address.

Timing margins: waits are measured on the server between request arrivals. A wait the client
must make is checked from below exactly, because time.sleep never returns early. Upper bounds
leave 1.5 s or more for a busy two-core machine.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from jobvisor.errors import ConfigError, JobvisorError
from jobvisor.net import (
    CloudinaryClient,
    HttpClient,
    HttpError,
    RetryPolicy,
    attempts_of,
    http_client,
    openai_client,
)
from jobvisor.net.http import _build_retry

# Small waits keep the suite fast. Tests about the wait itself set their own policy.
FAST = RetryPolicy(total=3, backoff_initial_s=0.05, backoff_jitter_s=0.0)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Hit:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    content_type: str
    arrived_at: float
    client_port: int


Script = Reply | Callable[[], Reply]


class ScriptedServer:
    """HTTP/1.1 server that replies from a script per path, repeating the last reply."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Script]] = {}
        self.hits: list[Hit] = []
        self.connections = 0
        self.client_ports: set[int] = set()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        # A client that timed out closes its socket before a slow reply is written. The
        # server does not print the expected broken pipe.
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Script) -> None:
        self.scripts[path] = list(replies)

    def hits_for(self, path: str) -> list[Hit]:
        with self.lock:
            return [hit for hit in self.hits if hit.path == path]

    def gaps_s(self, path: str) -> list[float]:
        times = [hit.arrived_at for hit in self.hits_for(path)]
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    def _next_reply(self, path: str) -> Reply:
        with self.lock:
            script = self.scripts.get(path)
            if not script:
                return Reply(404, b"no script for this path")
            entry = script.pop(0) if len(script) > 1 else script[0]
        return entry() if callable(entry) else entry

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes. With Nagle's algorithm on, the body
            # would wait about 40 ms for the client's delayed ACK on every request.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with server.lock:
                    server.connections += 1
                    server.client_ports.add(self.client_address[1])

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                arrived_at = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                with server.lock:
                    server.hits.append(Hit(
                        method=self.command,
                        path=parts.path,
                        query=parts.query,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                        content_type=self.headers.get("Content-Type", ""),
                        arrived_at=arrived_at,
                        client_port=self.client_address[1],
                    ))
                reply = server._next_reply(parts.path)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        return Handler


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    scripted.thread.start()
    yield scripted
    scripted.httpd.shutdown()
    scripted.httpd.server_close()


class BreakerOpen(JobvisorError):
    """Raised by CountingBreaker when it is open."""


class CountingBreaker:
    """Minimal breaker that counts its calls and raises while ``is_open``."""

    def __init__(self, is_open: bool = False) -> None:
        self.is_open = is_open
        self.before_calls = 0
        self.successes = 0
        self.failures = 0

    def before_call(self) -> None:
        self.before_calls += 1
        if self.is_open:
            raise BreakerOpen("breaker is open")

    def on_success(self) -> None:
        self.successes += 1

    def on_failure(self) -> None:
        self.failures += 1


def closed_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Retry-After


def test_retry_after_seconds_waits(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script("/limited", Reply(429, b"slow down", {"Retry-After": "2"}), Reply(200, b"done"))
    client = HttpClient(server.url(), retries=FAST)

    with caplog.at_level(logging.WARNING, logger="jobvisor.net.http"):
        response = client.get("/limited")

    assert response.status_code == 200
    assert response.text == "done"
    gaps = server.gaps_s("/limited")
    assert len(gaps) == 1
    assert gaps[0] >= 2.0
    assert gaps[0] < 4.5
    retry_logs = [r for r in caplog.records if r.name == "jobvisor.net.http"]
    assert len(retry_logs) == 1
    assert retry_logs[0].levelno == logging.WARNING
    message = retry_logs[0].getMessage()
    assert f"GET {server.url('/limited')}" in message
    assert "status 429" in message
    assert "attempt 2 of 4" in message
    assert "in 2.00 s" in message


def test_retry_after_http_date_waits(server: ScriptedServer) -> None:
    # The date is rounded up to a whole second, so the wait is 3 s to 4 s from the first
    # request, less the few milliseconds before the client reads it.
    def limited_until_date() -> Reply:
        retry_at = math.ceil(time.time()) + 3
        return Reply(503, b"busy", {"Retry-After": formatdate(retry_at, usegmt=True)})

    server.script("/busy", limited_until_date, Reply(200))
    client = HttpClient(server.url(), retries=FAST)

    assert client.get("/busy").status_code == 200
    gaps = server.gaps_s("/busy")
    assert len(gaps) == 1
    assert gaps[0] >= 2.0
    assert gaps[0] < 4.5


def test_retry_after_past_date_retries_at_once(server: ScriptedServer) -> None:
    past = formatdate(time.time() - 3600, usegmt=True)
    server.script("/past", Reply(429, headers={"Retry-After": past}), Reply(200))
    # A 2 s backoff shows that the header's 0 s wait was used instead of the backoff.
    policy = RetryPolicy(total=2, backoff_initial_s=2.0, backoff_jitter_s=0.0)
    client = HttpClient(server.url(), retries=policy)

    assert client.get("/past").status_code == 200
    gaps = server.gaps_s("/past")
    assert len(gaps) == 1
    assert gaps[0] < 1.5


def test_urllib3_parses_past_date_as_zero() -> None:
    retry = _build_retry(RetryPolicy(), "http://127.0.0.1/", any_method=False)

    assert retry.parse_retry_after(formatdate(time.time() - 3600, usegmt=True)) == 0
    assert retry.parse_retry_after("7") == 7


def test_retry_after_capped_at_policy_max(server: ScriptedServer) -> None:
    server.script("/hostile", Reply(503, headers={"Retry-After": "86400"}), Reply(200))
    policy = RetryPolicy(total=2, backoff_initial_s=0.05, max_retry_after_s=0.5)
    client = HttpClient(server.url(), retries=policy)

    assert client.get("/hostile").status_code == 200
    gaps = server.gaps_s("/hostile")
    assert len(gaps) == 1
    assert gaps[0] >= 0.5
    assert gaps[0] < 2.0


def test_invalid_retry_after_uses_backoff(server: ScriptedServer) -> None:
    server.script("/garbled", Reply(429, headers={"Retry-After": "soon"}), Reply(200))
    client = HttpClient(server.url(), retries=FAST)

    assert client.get("/garbled").status_code == 200
    assert len(server.hits_for("/garbled")) == 2


# Status retries and backoff


def test_503_twice_then_success(server: ScriptedServer) -> None:
    server.script("/flaky", Reply(503), Reply(503), Reply(200, b"third"))
    policy = RetryPolicy(total=5, backoff_initial_s=0.1, backoff_jitter_s=0.0)
    client = HttpClient(server.url(), retries=policy)

    response = client.get("/flaky")

    assert response.status_code == 200
    assert response.text == "third"
    assert attempts_of(response) == 3
    gaps = server.gaps_s("/flaky")
    assert len(gaps) == 2
    assert gaps[0] >= 0.1
    assert gaps[1] >= 0.2


def test_backoff_schedule_doubles_to_cap() -> None:
    policy = RetryPolicy(backoff_jitter_s=0.0)

    waits = [policy.backoff_s(n) for n in range(1, 9)]

    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert RetryPolicy(backoff_jitter_s=0.0).backoff_s(10_000) == 30.0


def test_backoff_jitter_within_range() -> None:
    policy = RetryPolicy(backoff_jitter_s=0.5)

    first_waits = [policy.backoff_s(1) for _ in range(200)]

    assert min(first_waits) >= 1.0
    assert max(first_waits) <= 1.5
    assert len(set(first_waits)) > 1


def test_exhausted_retries_raise_http_error(server: ScriptedServer) -> None:
    server.script("/down", Reply(503, b"maintenance"))
    client = HttpClient(server.url(), retries=RetryPolicy(total=2, backoff_initial_s=0.05))

    with pytest.raises(HttpError) as caught:
        client.get("/down", params={"token": "s3cret"})

    error = caught.value
    assert error.status == 503
    assert error.attempts == 3
    assert error.method == "GET"
    assert error.url == server.url("/down")
    assert len(server.hits_for("/down")) == 3
    assert server.hits_for("/down")[0].query == "token=s3cret"
    message = str(error)
    assert f"GET {server.url('/down')} failed with status 503 after 3 attempts" in message
    assert "maintenance" in message
    assert "s3cret" not in message


def test_not_retried_status_raises_once(server: ScriptedServer) -> None:
    server.script("/unimplemented", Reply(501))
    client = HttpClient(server.url(), retries=FAST)

    with pytest.raises(HttpError) as caught:
        client.get("/unimplemented")

    assert caught.value.status == 501
    assert caught.value.attempts == 1
    assert len(server.hits_for("/unimplemented")) == 1


def test_client_error_returned_unless_raise_for_status(server: ScriptedServer) -> None:
    server.script("/missing", Reply(404, b"not here"))
    client = HttpClient(server.url(), retries=FAST)

    assert client.get("/missing").status_code == 404
    with pytest.raises(HttpError, match="status 404 after 1 attempt. Response body: not here"):
        client.get("/missing", raise_for_status=True)
    assert len(server.hits_for("/missing")) == 2


# Non-idempotent methods


def test_post_not_retried_by_default(server: ScriptedServer) -> None:
    server.script("/charge", Reply(503))
    client = HttpClient(server.url(), retries=FAST)

    with pytest.raises(HttpError) as caught:
        client.post("/charge", json={"amount": 5})

    assert caught.value.status == 503
    assert caught.value.attempts == 1
    assert "idempotency_key" in str(caught.value)
    assert len(server.hits_for("/charge")) == 1


def test_post_with_idempotency_key_retried(server: ScriptedServer) -> None:
    server.script("/charge", Reply(503), Reply(201, b"created"))
    client = HttpClient(server.url(), retries=FAST)

    response = client.post("/charge", json={"amount": 5}, idempotency_key="order-42")

    assert response.status_code == 201
    hits = server.hits_for("/charge")
    assert len(hits) == 2
    assert [hit.headers.get("idempotency-key") for hit in hits] == ["order-42", "order-42"]
    assert [json.loads(hit.body) for hit in hits] == [{"amount": 5}, {"amount": 5}]


def test_patch_retried_when_opted_in(server: ScriptedServer) -> None:
    server.script("/item", Reply(502), Reply(200))
    client = HttpClient(server.url(), retries=FAST)

    assert client.patch("/item", json={"a": 1}, retry_non_idempotent=True).status_code == 200
    assert len(server.hits_for("/item")) == 2
    assert "idempotency-key" not in server.hits_for("/item")[0].headers


def test_opt_in_does_not_leak_to_next_call(server: ScriptedServer) -> None:
    server.script("/charge", Reply(503))
    client = HttpClient(server.url(), retries=FAST)

    with pytest.raises(HttpError):
        client.post("/charge", retry_non_idempotent=True)
    with pytest.raises(HttpError):
        client.post("/charge")

    assert len(server.hits_for("/charge")) == FAST.total + 1 + 1


# Transport errors


def test_read_timeout_raises_http_error(server: ScriptedServer) -> None:
    server.script("/slow", Reply(200, b"late", delay_s=2.0))
    client = HttpClient(server.url(), timeout_s=0.3, retries=RetryPolicy(
        total=1, backoff_initial_s=0.05, backoff_jitter_s=0.0))

    started = time.monotonic()
    with pytest.raises(HttpError) as caught:
        client.get("/slow")
    elapsed = time.monotonic() - started

    error = caught.value
    assert error.timed_out
    assert error.status is None
    assert error.attempts == 2
    assert isinstance(error.__cause__, requests.RequestException)
    assert "timed out after 2 attempts" in str(error)
    assert len(server.hits_for("/slow")) == 2
    assert elapsed < 1.9


def test_connection_refused_raises_http_error() -> None:
    client = HttpClient(f"http://127.0.0.1:{closed_port()}", retries=RetryPolicy(
        total=2, backoff_initial_s=0.01, backoff_jitter_s=0.0))

    with pytest.raises(HttpError) as caught:
        client.get("/anything")

    error = caught.value
    assert error.status is None
    assert not error.timed_out
    assert error.attempts == 3
    assert isinstance(error.__cause__, requests.ConnectionError)
    assert "Connection refused" in str(error)


# Connections


def test_sequential_gets_reuse_one_connection(server: ScriptedServer) -> None:
    server.script("/ping", Reply(200, b"pong"))
    client = HttpClient(server.url())

    for _ in range(200):
        assert client.get("/ping").text == "pong"

    assert len(server.hits_for("/ping")) == 200
    assert server.connections <= 2
    assert len(server.client_ports) <= 2


def test_forked_child_opens_own_connection(server: ScriptedServer) -> None:
    server.script("/ping", Reply(200, b"pong"))
    client = HttpClient(server.url())
    assert client.get("/ping").status_code == 200
    assert server.connections == 1
    cached = http_client("fork-test", base_url=server.url())

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ok = client.get("/ping").status_code == 200
            own = http_client("fork-test", base_url=server.url()) is not cached
            code = 0 if ok and own else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert server.connections == 2
    assert client.get("/ping").status_code == 200
    assert server.connections == 2


def test_http_client_cached_per_service(server: ScriptedServer) -> None:
    first = http_client("cache-test", base_url=server.url())

    assert http_client("cache-test") is first
    assert http_client("cache-test", base_url=server.url()) is first
    assert http_client("cache-test-other", base_url=server.url()) is not first
    with pytest.raises(ConfigError, match="already built in this process"):
        http_client("cache-test", base_url=server.url("/v2"))


# Breaker


def test_breaker_counts_logical_call_once(server: ScriptedServer) -> None:
    server.script("/down", Reply(503))
    server.script("/ok", Reply(200))
    server.script("/missing", Reply(404))
    breaker = CountingBreaker()
    client = HttpClient(server.url(), retries=FAST, breaker=breaker)

    with pytest.raises(HttpError):
        client.get("/down")
    assert len(server.hits_for("/down")) == FAST.total + 1
    assert breaker.before_calls == 1
    assert breaker.failures == 1
    assert breaker.successes == 0

    client.get("/ok")
    client.get("/missing")
    assert breaker.before_calls == 3
    assert breaker.successes == 2
    assert breaker.failures == 1


def test_breaker_counts_timeout_as_failure(server: ScriptedServer) -> None:
    server.script("/slow", Reply(200, delay_s=1.0))
    breaker = CountingBreaker()
    client = HttpClient(server.url(), timeout_s=0.2, retries=RetryPolicy(total=0),
                        breaker=breaker)

    with pytest.raises(HttpError):
        client.get("/slow")

    assert breaker.failures == 1
    assert breaker.successes == 0


def test_open_breaker_sends_nothing(server: ScriptedServer) -> None:
    server.script("/ok", Reply(200))
    breaker = CountingBreaker(is_open=True)
    client = HttpClient(server.url(), retries=FAST, breaker=breaker)

    with pytest.raises(BreakerOpen):
        client.get("/ok")

    assert server.hits == []
    assert server.connections == 0
    assert breaker.failures == 0


def test_caller_error_not_counted_by_breaker() -> None:
    breaker = CountingBreaker()
    client = HttpClient(retries=FAST, breaker=breaker)

    with pytest.raises(ConfigError, match="relative"):
        client.get("/no-base-url")
    with pytest.raises(TypeError, match="not JSON serializable"):
        client.post("http://127.0.0.1:9/never-sent", json={"bad": object()})

    assert breaker.before_calls == 0
    assert breaker.failures == 0


# Settings


def test_invalid_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        HttpClient("ftp://127.0.0.1/")
    with pytest.raises(ConfigError, match="timeout_s"):
        HttpClient(timeout_s=0)
    with pytest.raises(ConfigError, match="total"):
        RetryPolicy(total=-1)
    with pytest.raises(ConfigError, match="backoff_factor"):
        RetryPolicy(backoff_factor=0.5)


# OpenAI-style client


def test_openai_client_sends_bearer_key(server: ScriptedServer) -> None:
    server.script("/v1/models", Reply(200, b'{"data": []}'))
    client = openai_client(api_key="sk-test", base_url=server.url("/v1"))

    assert client.get("models").json() == {"data": []}
    hit = server.hits_for("/v1/models")[0]
    assert hit.headers["authorization"] == "Bearer sk-test"
    assert client.service == "openai"


def test_openai_client_key_from_environment(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.script("/v1/models", Reply(200, b"{}"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")

    client = http_client("openai", base_url=server.url("/v1"))
    client.get("models")

    assert server.hits_for("/v1/models")[0].headers["authorization"] == "Bearer sk-from-env"
    assert client.service == "openai"


def test_openai_client_without_key_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        openai_client(base_url="http://127.0.0.1:9/v1")


# Cloudinary-style client


def expected_signature(params: dict[str, str], secret: str, digest: Any = hashlib.sha1) -> str:
    """Compute the documented signature: sorted name=value pairs joined by & plus secret."""
    pairs = "&".join(f"{name}={params[name]}" for name in sorted(params))
    return digest((pairs + secret).encode()).hexdigest()


def test_cloudinary_signature_matches_docs_example() -> None:
    # Cloudinary's support article "How to generate a Cloudinary signature on my own?"
    # gives this check: signing "public_id=sample_image&timestamp=1315060510" with the
    # secret "abcd" yields the digest below.
    cloudinary = CloudinaryClient("demo", "1234", "abcd")

    fields = cloudinary.signed_upload_params({"public_id": "sample_image"}, timestamp=1315060510)

    assert fields == {
        "public_id": "sample_image",
        "timestamp": "1315060510",
        "api_key": "1234",
        "signature": "b4ad47fb4e25c7bf5f92a20089f9db59bc302313",
    }


def test_cloudinary_signature_excludes_unsigned_params() -> None:
    cloudinary = CloudinaryClient("demo", "1234", "abcd")
    params = {
        "public_id": "cat",
        "eager": "w_400,h_300,c_pad|w_260,h_200,c_crop",
        "tags": ["pets", "cats"],
        "overwrite": True,
        "folder": "",
        "context": None,
        "file": "https://example.com/cat.jpg",
        "resource_type": "image",
        "cloud_name": "demo",
        "api_key": "ignored",
    }

    fields = cloudinary.signed_upload_params(params, timestamp=1700000000)

    signed = {
        "eager": "w_400,h_300,c_pad|w_260,h_200,c_crop",
        "overwrite": "true",
        "public_id": "cat",
        "tags": "pets,cats",
        "timestamp": "1700000000",
    }
    assert fields["signature"] == expected_signature(signed, "abcd")
    assert fields["api_key"] == "1234"
    assert "folder" not in fields
    assert "context" not in fields
    assert fields["file"] == "https://example.com/cat.jpg"


def test_cloudinary_signature_sha256() -> None:
    cloudinary = CloudinaryClient("demo", "1234", "abcd", signature_algorithm="sha256")

    fields = cloudinary.signed_upload_params({"public_id": "sample_image"}, timestamp=1315060510)

    signed = {"public_id": "sample_image", "timestamp": "1315060510"}
    assert fields["signature"] == expected_signature(signed, "abcd", hashlib.sha256)
    assert len(fields["signature"]) == 64


def test_cloudinary_rejects_unsupported_value() -> None:
    cloudinary = CloudinaryClient("demo", "1234", "abcd")

    with pytest.raises(TypeError, match="'context'"):
        cloudinary.signed_upload_params({"context": {"alt": "cat"}})


def parse_multipart(hit: Hit) -> dict[str, bytes]:
    """Return the parts of a multipart/form-data body by field name."""
    head = f"Content-Type: {hit.content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + hit.body)
    parts: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[str(name)] = part.get_payload(decode=True) or b""
    return parts


def test_cloudinary_upload_sends_signed_fields(server: ScriptedServer) -> None:
    reply = json.dumps({"public_id": "cat", "secure_url": "https://res.example/cat.png"})
    server.script("/v1_1/demo/image/upload", Reply(200, reply.encode()))
    cloudinary = CloudinaryClient("demo", "1234", "abcd", base_url=server.url("/v1_1"))

    result = cloudinary.upload(b"\x89PNG fake", filename="cat.png", public_id="cat",
                               timestamp=1700000000)

    assert result["public_id"] == "cat"
    hits = server.hits_for("/v1_1/demo/image/upload")
    assert len(hits) == 1
    assert hits[0].method == "POST"
    parts = parse_multipart(hits[0])
    assert parts["file"] == b"\x89PNG fake"
    assert parts["public_id"] == b"cat"
    assert parts["timestamp"] == b"1700000000"
    assert parts["api_key"] == b"1234"
    signed = {"public_id": "cat", "timestamp": "1700000000"}
    assert parts["signature"].decode() == expected_signature(signed, "abcd")


def test_cloudinary_upload_retried_only_when_opted_in(server: ScriptedServer) -> None:
    path = "/v1_1/demo/image/upload"
    cloudinary = CloudinaryClient("demo", "1234", "abcd", base_url=server.url("/v1_1"),
                                  retries=FAST)

    server.script(path, Reply(500), Reply(200, b"{}"))
    with pytest.raises(HttpError) as caught:
        cloudinary.upload(b"img", public_id="cat")
    assert caught.value.status == 500
    assert len(server.hits_for(path)) == 1

    server.script(path, Reply(500), Reply(200, b'{"public_id": "cat"}'))
    assert cloudinary.upload(b"img", public_id="cat", retry_non_idempotent=True) == {
        "public_id": "cat"
    }
    assert len(server.hits_for(path)) == 3


def test_cloudinary_upload_error_names_reason(server: ScriptedServer) -> None:
    error_body = json.dumps({"error": {"message": "Invalid Signature abc"}}).encode()
    server.script("/v1_1/demo/image/upload", Reply(401, error_body))
    cloudinary = CloudinaryClient("demo", "1234", "abcd", base_url=server.url("/v1_1"))

    with pytest.raises(HttpError, match="status 401.*Invalid Signature abc"):
        cloudinary.upload(b"img")
