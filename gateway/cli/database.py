"""The admin DSN options every database command takes, and the warning a password on the
command line earns: any local user can read it in the process list."""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path

from gateway.db import ADMIN_DSN_ENV, ADMIN_DSN_FILE_ENV, admin_dsn

__all__ = ["PASSWORD_WARNING", "add_dsn_options", "dsn_has_password", "resolve_dsn"]

PASSWORD_WARNING = (
    "gateway: warning: the password in --dsn is visible to other local users in the process "
    f"list; use {ADMIN_DSN_FILE_ENV} or --dsn-file"
)


def add_dsn_options(parser: argparse.ArgumentParser) -> None:
    """`--dsn` and `--dsn-file`, one or the other."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--dsn-file",
        type=Path,
        metavar="PATH",
        help=f"file holding the admin DSN (default: ${ADMIN_DSN_FILE_ENV}, else ${ADMIN_DSN_ENV})",
    )
    group.add_argument(
        "--dsn", help="admin DSN; a password in it shows in the process list, prefer --dsn-file"
    )


def dsn_has_password(dsn: str) -> bool:
    """Whether the DSN carries a password, read as asyncpg reads it: `user:PASSWORD@` before the
    first `@` of the authority, or `password=` in the query."""
    try:
        parsed = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qs(parsed.query)
    except ValueError:
        # Unparsable here means unparsable for the driver too; still, say so if it looks like one.
        return "@" in dsn or "password=" in dsn
    auth, at, _ = parsed.netloc.partition("@")
    if at and auth.partition(":")[2]:
        return True
    return any(value for value in query.get("password", []))


def resolve_dsn(args: argparse.Namespace) -> str:
    """The admin DSN from the parsed options, warning once on stderr if `--dsn` shows a password."""
    if args.dsn and dsn_has_password(args.dsn):
        print(PASSWORD_WARNING, file=sys.stderr)
    return admin_dsn(args.dsn, args.dsn_file)
