"""The plans of jobvisor's claim, from auto_explain, and the sorts inside them.

The claim is a plpgsql function whose statements EXPLAIN on the outer query cannot show.
auto_explain with ``log_nested_statements`` logs the plan of every statement the function
runs; with ``client_min_messages = log`` the server sends those log lines to this session
as notices. The claim runs inside a transaction that is rolled back, so it takes no job.
Loading auto_explain needs a superuser, or the module listed in session_preload_libraries.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.rows import dict_row

from jobvisor.db.store import JobStore

SORT_NODES = ("Sort", "Incremental Sort")
AUTO_EXPLAIN_SETTINGS = (
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_analyze = on",
    "SET auto_explain.log_buffers = on",
    "SET auto_explain.log_nested_statements = on",
    "SET auto_explain.log_format = json",
    "SET client_min_messages = log",
)


def explain_claim(
    dsn: str, job_type: str, *, batch_size: int, type_limit: int, max_per_user: int
) -> dict[str, Any]:
    """Run one claim as a worker would, rolled back, and return its statements' plans.

    Returns ``{"checked": False, "reason": ...}`` when auto_explain cannot be loaded.
    """
    notices: list[str] = []
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary or ""))
        try:
            conn.execute("LOAD 'auto_explain'")
            for statement in AUTO_EXPLAIN_SETTINGS:
                conn.execute(statement)  # type: ignore[arg-type]
        except psycopg.Error as error:
            return {"checked": False,
                    "reason": f"auto_explain is not available to this role: {error}".strip()}
        with conn.transaction(force_rollback=True):
            claimed = JobStore(conn).claim(
                [job_type], "bench-explain", batch_size, 60.0,
                type_limits=[type_limit], max_per_user=max_per_user,
            )
    plans = [plan for plan in (_parse(notice) for notice in notices) if plan is not None]
    return {"checked": True, "claimed": len(claimed), "plans": plans,
            "sorts": list(sort_nodes(plans))}


def _parse(message: str) -> dict[str, Any] | None:
    """Return the JSON plan of an auto_explain log line, or None for other notices."""
    start = message.find("{")
    if "plan:" not in message or start < 0:
        return None
    with contextlib.suppress(json.JSONDecodeError):
        return json.loads(message[start:])
    return None


def sort_nodes(plans: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Yield every Sort node of the plans with the number of rows it read.

    A sort reads its inputs' actual rows times their loops. Its own output can be smaller,
    as with a top-N heapsort under a LIMIT.
    """
    for plan in plans:
        query = " ".join(str(plan.get("Query Text", "")).split())[:160]
        for node in _walk(plan.get("Plan", {})):
            if node.get("Node Type") not in SORT_NODES:
                continue
            read = sum(
                float(child.get("Actual Rows", 0)) * float(child.get("Actual Loops", 1))
                for child in node.get("Plans", [])
            )
            yield {
                "query": query,
                "node": node.get("Node Type"),
                "sort_key": node.get("Sort Key"),
                "method": node.get("Sort Method"),
                "rows_read": read,
                "loops": node.get("Actual Loops"),
            }


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)
