"""Ready-made clients for OpenAI-style APIs and Cloudinary-style image uploads."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from typing import Any

from jobvisor.errors import ConfigError
from jobvisor.net.http import (
    HttpClient,
    HttpError,
    attempts_of,
    redact_url,
    register_client_factory,
)

OPENAI_BASE_URL = "https://api.openai.com/v1"
CLOUDINARY_BASE_URL = "https://api.cloudinary.com/v1_1"

#: Upload parameters that Cloudinary leaves out of the signed string.
CLOUDINARY_UNSIGNED_PARAMS = frozenset({"file", "cloud_name", "resource_type", "api_key"})

#: Digest functions that Cloudinary accepts for upload signatures.
SIGNATURE_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}


def openai_client(
    api_key: str | None = None,
    base_url: str = OPENAI_BASE_URL,
    **client_options: Any,
) -> HttpClient:
    """Build an HttpClient for an OpenAI-style API that authenticates with a bearer token.

    The key is ``api_key`` or else the ``OPENAI_API_KEY`` environment variable.
    ``client_options`` go to :class:`HttpClient`, and ``headers`` among them are sent along
    with the Authorization header. POST endpoints are retried only when a call opts in, for
    example ``client.post("embeddings", json=..., retry_non_idempotent=True)``.
    """
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ConfigError(
            "the OpenAI API key is missing: pass api_key= or set the OPENAI_API_KEY "
            "environment variable"
        )
    headers = {"Authorization": f"Bearer {key}", **(client_options.pop("headers", None) or {})}
    client_options.setdefault("service", "openai")
    return HttpClient(base_url, headers=headers, **client_options)


register_client_factory("openai", openai_client)


def _form_value(name: str, value: Any) -> str:
    """Return the string that Cloudinary receives and signs for one parameter value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        # Array parameters are signed with their values joined by commas.
        return ",".join(_form_value(name, item) for item in value)
    raise TypeError(
        f"Cloudinary parameter {name!r} has a value of type {type(value).__name__}, which "
        "cannot be signed. Pass a str, int, float, bool, or a list of them (a context is a "
        "'key=value|key=value' str)."
    )


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, (list, tuple)) and not value)


class CloudinaryClient:
    """Signed uploads to a Cloudinary-style upload API.

    The signature rules come from Cloudinary's page "Generating authentication signatures"
    (https://cloudinary.com/documentation/authentication_signatures, last updated
    2024-03-18). The signed string contains every parameter of the call except file,
    cloud_name, resource_type and api_key, plus timestamp. The parameters are sorted by
    name and joined as ``name=value`` pairs with ``&``, and the API secret is appended.
    The signature is the SHA-1 (or SHA-256) hex digest of that string. Values of array
    parameters are joined with commas (https://cloudinary.com/documentation/signatures).
    Empty values are left out of the signature and of the form. Cloudinary rejects a
    signature more than an hour after its timestamp.
    """

    def __init__(
        self,
        cloud_name: str,
        api_key: str,
        api_secret: str,
        base_url: str = CLOUDINARY_BASE_URL,
        *,
        signature_algorithm: str = "sha1",
        **client_options: Any,
    ) -> None:
        for name, value in (("cloud_name", cloud_name), ("api_key", api_key),
                            ("api_secret", api_secret)):
            if not value:
                raise ConfigError(f"Cloudinary {name} is missing: pass a non-empty {name}")
        if signature_algorithm not in SIGNATURE_ALGORITHMS:
            raise ConfigError(
                f"signature_algorithm {signature_algorithm!r} is invalid: use one of "
                f"{sorted(SIGNATURE_ALGORITHMS)}"
            )
        self.cloud_name = cloud_name
        self.api_key = api_key
        self._api_secret = api_secret
        self.signature_algorithm = signature_algorithm
        client_options.setdefault("service", "cloudinary")
        self.http = HttpClient(base_url, **client_options)

    def __repr__(self) -> str:
        return f"CloudinaryClient(cloud_name={self.cloud_name!r}, api_key={self.api_key!r})"

    def signed_upload_params(
        self, params: Mapping[str, Any], timestamp: int | None = None
    ) -> dict[str, str]:
        """Return the form fields of a signed upload: params, api_key, timestamp, signature.

        ``timestamp`` is Unix time in seconds (default: now). Every value is returned as
        the string that is signed and sent. Empty values are dropped. A ``file`` entry (a
        remote URL, say) is returned but not signed.
        """
        if "signature" in params:
            raise ValueError("params must not contain 'signature', because this method computes it")
        fields = {
            name: _form_value(name, value)
            for name, value in params.items()
            if not _is_empty(value)
        }
        fields.pop("api_key", None)
        if timestamp is None:
            timestamp = int(fields.get("timestamp") or time.time())
        fields["timestamp"] = str(int(timestamp))

        signed = sorted(
            (name, value) for name, value in fields.items()
            if name not in CLOUDINARY_UNSIGNED_PARAMS
        )
        to_sign = "&".join(f"{name}={value}" for name, value in signed) + self._api_secret
        digest = SIGNATURE_ALGORITHMS[self.signature_algorithm](to_sign.encode("utf-8"))

        fields["api_key"] = self.api_key
        fields["signature"] = digest.hexdigest()
        return fields

    def upload_url(self, resource_type: str = "image") -> str:
        """Return the upload endpoint for ``resource_type`` (image, video or raw)."""
        return self.http.url_for(f"{self.cloud_name}/{resource_type}/upload")

    def upload(
        self,
        file_bytes: bytes,
        *,
        filename: str = "file",
        resource_type: str = "image",
        timestamp: int | None = None,
        retry_non_idempotent: bool = False,
        **params: Any,
    ) -> dict[str, Any]:
        """Upload ``file_bytes`` as a signed multipart POST and return the parsed JSON response.

        ``params`` are upload parameters such as ``public_id`` or ``folder``. The POST is
        retried only with ``retry_non_idempotent=True``. That is safe when a fixed
        ``public_id`` makes a repeated upload overwrite the first. Raises HttpError for
        any status of 400 or more, with Cloudinary's error text in the message.
        """
        if "file" in params:
            raise ValueError("pass the file as file_bytes, not as a 'file' parameter")
        fields = self.signed_upload_params(params, timestamp=timestamp)
        url = self.upload_url(resource_type)
        response = self.http.post(
            url,
            data=fields,
            files={"file": (filename, file_bytes)},
            retry_non_idempotent=retry_non_idempotent,
            raise_for_status=True,
        )
        try:
            result: dict[str, Any] = response.json()
        except ValueError as exc:
            raise HttpError(
                f"POST {redact_url(url)} returned status {response.status_code} with a body "
                f"that is not JSON: {response.text[:200]!r}",
                method="POST", url=redact_url(url), attempts=attempts_of(response),
                status=response.status_code, response=response,
            ) from exc
        return result
