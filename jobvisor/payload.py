"""Turning job input and results into JSON that PostgreSQL's jsonb accepts.

jsonb rejects what Python's json module lets through: the NUL character (``\\u0000``) in
strings and keys, and NaN or Infinity. Those are reported with the path of the offending
value, so that a caller can find it in a large payload.
"""

from __future__ import annotations

import enum
import json
import math
import uuid
from typing import Any

import orjson

from jobvisor.errors import InvalidJobError



# orjson encodes the common case several times faster than json. Types that json rejects
# (dates, dataclasses) are passed through to orjson's `default`, which raises, so that json
# decides and names the problem. Both accept UUIDs (as their string) and enum members (as
# their value).
_FAST_OPTIONS = (
    orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _fast_encode(value: Any) -> str | None:
    """Return orjson's encoding of ``value``, or None when json must decide.

    orjson writes NaN and Infinity as null, so any output with a null goes to json, which
    rejects them.
    """
    try:
        encoded = orjson.dumps(value, option=_FAST_OPTIONS)
    except (TypeError, orjson.JSONEncodeError):
        return None
    if b"null" in encoded:
        return None
    return encoded.decode()


def _convert(value: Any) -> Any:
    """Encode what orjson encodes natively beyond plain JSON types: UUIDs and enum members."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


_encoder = json.JSONEncoder(
    allow_nan=False, ensure_ascii=False, separators=(",", ":"), default=_convert
)


def to_json(value: Any, *, what: str, max_bytes: int | None = None) -> str:
    """Serialize ``value`` for a jsonb column, or raise :class:`InvalidJobError`.

    ``what`` names the value in error messages, for example "input_data of row 3".
    """
    text = _fast_encode(value)
    try:
        if text is None:
            text = _encoder.encode(value)
    except ValueError:
        path, bad = _find(value, _is_non_finite) or ("$", None)
        raise InvalidJobError(
            f"{what} contains {_name_float(bad)} at {path}; JSON has no NaN or Infinity, so "
            "send null or a string instead"
        ) from None
    except TypeError:
        path, bad = _find(value, _is_unsupported) or ("$", value)
        raise InvalidJobError(
            f"{what} contains a value of type {type(bad).__name__} at {path}, which is not "
            "JSON-serializable; use dicts, lists, strings, numbers, booleans and None"
        ) from None

    # The escaped form can also come from a literal backslash followed by "u0000", so the
    # walk confirms before rejecting.
    if "\\u0000" in text:
        found = _find(value, _has_nul)
        if found is not None:
            raise InvalidJobError(
                f"{what} contains a NUL character (\\u0000) at {found[0]}; PostgreSQL jsonb "
                "cannot store it, so remove it or encode the data (for example as base64)"
            )

    try:
        encoded = text.encode()
    except UnicodeEncodeError:
        path, _ = _find(value, _has_surrogate) or ("$", None)
        raise InvalidJobError(
            f"{what} contains a lone surrogate code point at {path}, which is not valid UTF-8; "
            "decode the text properly or remove the surrogate"
        ) from None

    if max_bytes is not None:
        size = len(encoded)
        if size > max_bytes:
            raise InvalidJobError(
                f"{what} is {size} bytes of JSON, over the maximum of {max_bytes} bytes; store "
                "large data elsewhere and pass a reference, or raise max_payload_bytes"
            )
    return text


def _has_nul(value: Any) -> bool:
    return isinstance(value, str) and "\x00" in value


def _has_surrogate(value: Any) -> bool:
    return isinstance(value, str) and any("\ud800" <= char <= "\udfff" for char in value)


def _is_unsupported(value: Any) -> bool:
    supported = (dict, list, tuple, str, int, float, bool, type(None), uuid.UUID, enum.Enum)
    return not isinstance(value, supported)


def _is_scalar_key(key: Any) -> bool:
    # json turns int, float, bool and None keys into strings; other keys raise TypeError.
    return isinstance(key, (str, int, float, bool, type(None)))


def _is_non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _name_float(value: float | None) -> str:
    if value is None:
        return "a non-finite number"
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _find(value: Any, predicate: Any, path: str = "$") -> tuple[str, Any] | None:
    """Return the JSONPath and value of the first value or key for which ``predicate`` holds."""
    if predicate(value):
        return path, value
    if isinstance(value, dict):
        for key, item in value.items():
            if predicate(key) or (predicate is _is_unsupported and not _is_scalar_key(key)):
                return f"{path} (key {key!r})", key
            child = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key!r}]"
            found = _find(item, predicate, child)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find(item, predicate, f"{path}[{index}]")
            if found is not None:
                return found
    return None
