"""Planning role attributes, per-database settings and default privileges from plain states."""

from __future__ import annotations

from dataclasses import replace
from itertools import permutations

from hypothesis import given
from hypothesis import strategies as st

from gateway.bootstrap import EXAMPLE_ROLES
from gateway.roles.declaration import Declaration, load_declaration
from gateway.roles.plan import Plan, grant_sql, make_plan
from gateway.roles.shadow import cuts, reaches
from gateway.roles.state import (
    ClusterRole,
    Grant,
    Membership,
    RoleState,
    Shadow,
    State,
    desired_state,
    join_names,
    split_names,
)

LOGIN = "telemetry_ingest_login"


def example() -> Declaration:
    return load_declaration(EXAMPLE_ROLES)


def plan_against(live: State) -> Plan:
    doc = example()
    return make_plan(doc, live, passwords={doc.login_role(name): None for name in doc.roles})


def live_as_declared() -> State:
    live = desired_state(example())
    live.database = "gateway db"
    return live


def test_a_database_as_declared_needs_no_change() -> None:
    assert plan_against(live_as_declared()).empty


def test_escalations_are_taken_back_apart_from_other_attributes() -> None:
    live = live_as_declared()
    live.roles[LOGIN] = replace(
        live.roles[LOGIN], superuser=True, bypassrls=True, inherit=False, valid_until="2001-01-01"
    )
    changes = plan_against(live).changes
    assert [(c.kind, c.sql) for c in changes] == [
        ("revoke_attribute", (f'ALTER ROLE "{LOGIN}" NOSUPERUSER NOBYPASSRLS',)),
        ("alter_role", (f"""ALTER ROLE "{LOGIN}" INHERIT VALID UNTIL 'infinity'""",)),
    ]


def test_settings_in_this_database_are_reset_there() -> None:
    live = live_as_declared()
    live.roles[LOGIN] = replace(
        live.roles[LOGIN], database_settings=frozenset({("statement_timeout", "0")})
    )
    (change,) = plan_against(live).changes
    assert change.sql == (
        f'ALTER ROLE "{LOGIN}" IN DATABASE "gateway db" RESET "statement_timeout"',
    )


def test_every_default_privilege_has_its_sql_and_an_unknown_kind_is_a_note() -> None:
    live = live_as_declared()
    for objtype in ("r", "S", "f", "T", "n", "L", "Z"):
        live.grants.add(Grant("PUBLIC", "default", join_names(LOGIN, "", objtype, sep=":"), "X"))
    plan = plan_against(live)
    statements = [sql for c in plan.changes for sql in c.sql]
    assert f'ALTER DEFAULT PRIVILEGES FOR ROLE "{LOGIN}" REVOKE X ON LARGE OBJECTS FROM PUBLIC' in (
        statements
    )
    assert len(statements) == 6
    (note,) = [n for n in plan.notes if "'Z'" in n]
    assert "revoke it by hand" in note


def test_a_table_name_with_a_dot_stays_one_name() -> None:
    grant = Grant("reader", "table", join_names("ingest", "x.y"), "SELECT")
    assert grant_sql(grant, "REVOKE") == 'REVOKE SELECT ON TABLE "ingest"."x.y" FROM "reader"'


@given(st.lists(st.text(), min_size=1, max_size=4), st.sampled_from([".", ":"]))
def test_joined_names_split_back(parts: list[str], sep: str) -> None:
    assert split_names(join_names(*parts, sep=sep), sep) == parts


def test_the_rendered_plan_shows_every_statement_it_runs() -> None:
    live = live_as_declared()
    live.roles["gone"] = RoleState(
        "gone", login=False, comment="managed by m2m-gateway; id=r-gone; part=group"
    )
    live.grants.add(Grant("PUBLIC", "table", "ingest.telemetry", "DELETE"))
    plan = plan_against(live)
    shown = plan.render()
    assert 'DROP OWNED BY "gone";' in shown
    for change in plan.changes:
        assert change.summary in shown
        for statement in change.sql:
            assert f"      {statement};" in shown


def cluster(edges: list[tuple[str, str]], **roles: ClusterRole) -> Shadow:
    """A cluster of plain NOLOGIN roles (unless given), postgres the bootstrap superuser, and
    `edges` as (member, role) granted by postgres."""
    names = {name for edge in edges for name in edge} | {"postgres"}
    found = {name: ClusterRole(name, login=False, superuser=False) for name in names}
    found["postgres"] = ClusterRole("postgres", login=True, superuser=True, bootstrap=True)
    found.update(roles)
    return Shadow(
        roles=found,
        edges=tuple(Membership(role, member, grantor="postgres") for member, role in edges),
        session_user="postgres",
    )


def test_the_edge_into_the_reached_role_is_cut_once_for_everyone_behind_it() -> None:
    shadow = cluster(
        [("a", "files"), ("b", "files"), ("files", "pg_read_all_data"), ("c", "state_writer")]
    )
    found = [(c.role, c.member, c.sources) for c in cuts(shadow, example())]
    # a membership in a managed role is the plan's undeclared membership, cut all the same
    assert found == [
        ("pg_read_all_data", "files", ("a", "b", "files")),
        ("state_writer", "c", ("c",)),
    ]


def test_undeclared_superusers_are_demoted_and_their_members_kept_out() -> None:
    doc = example()
    shadow = cluster(
        [("climber", "root"), ("borrower", "dormant"), ("dormant", "postgres")],
        root=ClusterRole("root", login=True, superuser=True),
        dormant=ClusterRole("dormant", login=False, superuser=True),
    )
    live = live_as_declared()
    live.shadow = shadow
    plan = plan_against(live)
    assert [(c.kind, c.sql) for c in plan.changes] == [
        ("demote_superuser", ('ALTER ROLE "root" NOSUPERUSER',)),
        (
            "revoke_shadow_membership",
            ('REVOKE "dormant" FROM "borrower" GRANTED BY "postgres"',),
        ),
    ]
    # once root is demoted its member reaches nothing; dormant stays a superuser
    assert {(r.source, r.target) for r in reaches(shadow, doc, demoted=["root"])} == {
        ("borrower", "dormant"),
        ("borrower", "postgres"),
    }


NODES = ["a", "b", "c", "root", "dormant", "postgres", "pg_read_all_data", "pg_monitor"]
NODES += ["state_writer"]


@given(st.sets(st.sampled_from(list(permutations(NODES, 2)))), st.sets(st.sampled_from("abc")))
def test_what_plan_cuts_leaves_the_audit_no_way_in(
    edges: set[tuple[str, str]], logins: set[str]
) -> None:
    doc = example()
    shadow = cluster(
        sorted(edges),
        root=ClusterRole("root", login=True, superuser=True),
        dormant=ClusterRole("dormant", login=False, superuser=True),
        **{name: ClusterRole(name, login=True, superuser=False) for name in logins},
    )
    demoted = ["root"]
    cut = {(c.role, c.member) for c in cuts(shadow, doc, demoted=demoted)}
    after = replace(
        shadow,
        roles={**shadow.roles, "root": ClusterRole("root", login=True, superuser=False)},
        edges=tuple(e for e in shadow.edges if (e.role, e.member) not in cut),
    )
    assert reaches(after, doc) == []
    # and nothing is cut that carries no way in
    sources = {r.source for r in reaches(shadow, doc, demoted=demoted)}
    assert all(c.sources and set(c.sources) <= sources for c in cuts(shadow, doc, demoted=demoted))
