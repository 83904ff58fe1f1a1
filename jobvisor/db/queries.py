"""Named queries from ``jobvisor/sql/queries.sql``.

Each query starts with a ``-- name: NAME`` line, followed by comment lines that describe it.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString, cast

_HEADER = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, LiteralString]:
    text = resources.files("jobvisor.sql").joinpath("queries.sql").read_text()
    parts = _HEADER.split(text)
    named: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in named:
            raise RuntimeError(f"queries.sql defines {name!r} twice")
        named[name] = cast(LiteralString, body.strip())
    return named


def query(name: str) -> LiteralString:
    return queries()[name]
