"""The SQL a roles plan runs for grants with the grant option, on the database, and for
memberships with their options."""

from __future__ import annotations

from gateway.roles.sql import grant_sql, membership_options
from gateway.roles.state import Grant, Membership, join_names


def test_a_grant_option_is_revoked_with_what_was_passed_on() -> None:
    grant = Grant("telemetry_ingest", "table", "ingest.telemetry", "INSERT", grantable=True)
    assert grant_sql(grant, "REVOKE") == (
        'REVOKE INSERT ON TABLE "ingest"."telemetry" FROM "telemetry_ingest" CASCADE'
    )
    assert grant_sql(grant, "GRANT") == (
        'GRANT INSERT ON TABLE "ingest"."telemetry" TO "telemetry_ingest" WITH GRANT OPTION'
    )


def test_a_column_grant_option() -> None:
    grant = Grant("w", "column", "ingest.device_state", "SELECT", "state", grantable=True)
    assert grant_sql(grant, "REVOKE") == (
        'REVOKE SELECT ("state") ON TABLE "ingest"."device_state" FROM "w" CASCADE'
    )


def test_database_grants() -> None:
    grant = Grant("telemetry_ingest", "database", 'odd"name', "TEMPORARY")
    assert grant_sql(grant, "REVOKE") == (
        'REVOKE TEMPORARY ON DATABASE "odd""name" FROM "telemetry_ingest"'
    )


def test_default_privileges_with_the_grant_option() -> None:
    target = join_names("postgres", "ingest", "S", sep=":")
    grant = Grant("PUBLIC", "default", target, "USAGE", grantable=True)
    assert grant_sql(grant, "REVOKE") == (
        'ALTER DEFAULT PRIVILEGES FOR ROLE "postgres" IN SCHEMA "ingest" '
        "REVOKE USAGE ON SEQUENCES FROM PUBLIC CASCADE"
    )


def test_membership_options_are_all_written_out() -> None:
    assert membership_options(Membership("g", "m")) == ("WITH INHERIT TRUE, SET FALSE, ADMIN FALSE")
    assert membership_options(Membership("g", "m", inherit=False, set=True, admin=True)) == (
        "WITH INHERIT FALSE, SET TRUE, ADMIN TRUE"
    )
