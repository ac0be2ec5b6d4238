"""SQL text for a roles plan: names and literals quoted, and each attribute, setting, grant
and membership as the statement that sets or takes it back."""

from __future__ import annotations

from gateway.roles.state import Grant, Membership, RoleState, split_names

__all__ = [
    "ATTRIBUTES",
    "DEFAULT_OBJECTS",
    "attribute_sql",
    "grant_sql",
    "grantee_sql",
    "ident",
    "known",
    "literal",
    "membership_options",
    "revoke_membership_sql",
    "role_options",
    "setting_sql",
    "table_sql",
]


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def grantee_sql(name: str) -> str:
    return "PUBLIC" if name == "PUBLIC" else ident(name)


def table_sql(target: str) -> str:
    return ".".join(ident(part) for part in split_names(target))


def setting_sql(key: str) -> str:
    """A setting's name as SQL: dotted (`extension.name`), each part quoted."""
    return ".".join(ident(part) for part in key.split("."))


# Each attribute a role has, as (field, keyword when true, keyword when false); the wanted value
# of each is the field's default in `RoleState` unless the declaration says otherwise.
ATTRIBUTES = (
    ("login", "LOGIN", "NOLOGIN"),
    ("createrole", "CREATEROLE", "NOCREATEROLE"),
    ("superuser", "SUPERUSER", "NOSUPERUSER"),
    ("createdb", "CREATEDB", "NOCREATEDB"),
    ("replication", "REPLICATION", "NOREPLICATION"),
    ("bypassrls", "BYPASSRLS", "NOBYPASSRLS"),
    ("inherit", "INHERIT", "NOINHERIT"),
)


def attribute_sql(role: RoleState, name: str) -> str:
    if name == "connection_limit":
        return f"CONNECTION LIMIT {role.connection_limit}"
    if name == "valid_until":
        # PostgreSQL cannot unset VALID UNTIL; 'infinity' is the same "never expires".
        return f"VALID UNTIL {literal(role.valid_until or 'infinity')}"
    _, yes, no = next(a for a in ATTRIBUTES if a[0] == name)
    return yes if getattr(role, name) else no


def role_options(role: RoleState) -> str:
    """Every attribute of `role`, for CREATE ROLE (VALID UNTIL only when it has one)."""
    names = [a[0] for a in ATTRIBUTES] + ["connection_limit"]
    return " ".join(
        [attribute_sql(role, name) for name in names]
        + ([attribute_sql(role, "valid_until")] if role.valid_until else [])
    )


# PostgreSQL 18's `pg_default_acl.defaclobjtype`; large objects and schemas belong to no schema.
DEFAULT_OBJECTS = {
    "r": "TABLES",
    "S": "SEQUENCES",
    "f": "FUNCTIONS",
    "T": "TYPES",
    "n": "SCHEMAS",
    "L": "LARGE OBJECTS",
}


def known(grant: Grant) -> bool:
    """Whether this version can write the SQL for the grant (not a default privilege on a kind
    of object a newer PostgreSQL added)."""
    return grant.kind != "default" or split_names(grant.target, ":")[2] in DEFAULT_OBJECTS


def grant_sql(grant: Grant, verb: str) -> str:
    """GRANT or REVOKE one privilege. A grant option revoked takes with it whatever the grantee
    passed on (CASCADE): those are drift too, and PostgreSQL refuses the REVOKE otherwise."""
    direction = "TO" if verb == "GRANT" else "FROM"
    option = ""
    if grant.grantable:
        option = " WITH GRANT OPTION" if verb == "GRANT" else " CASCADE"
    statement = f"{verb} {grant.privilege}{_on(grant)} {direction} {grantee_sql(grant.grantee)}"
    if grant.kind == "default":
        owner, schema, _ = split_names(grant.target, ":")
        in_schema = f" IN SCHEMA {ident(schema)}" if schema else ""
        statement = f"ALTER DEFAULT PRIVILEGES FOR ROLE {ident(owner)}{in_schema} {statement}"
    return statement + option


def _on(grant: Grant) -> str:
    """The object part of a grant: ` (column) ON TABLE t`, ` ON SCHEMA s`, ` ON SEQUENCES`..."""
    if grant.kind == "schema":
        return f" ON SCHEMA {ident(grant.target)}"
    if grant.kind == "database":
        return f" ON DATABASE {ident(grant.target)}"
    if grant.kind == "default":
        return f" ON {DEFAULT_OBJECTS[split_names(grant.target, ':')[2]]}"
    if grant.kind == "sequence":
        return f" ON SEQUENCE {table_sql(grant.target)}"
    if grant.kind == "routine":
        # The catalog's own rendering (regprocedure): quoted, schema-qualified, with argument types.
        return f" ON ROUTINE {grant.target}"
    column = f" ({ident(grant.column)})" if grant.kind == "column" else ""
    return f"{column} ON TABLE {table_sql(grant.target)}"


def membership_options(m: Membership) -> str:
    """A membership's options as GRANT writes them."""
    return (
        f"WITH INHERIT {str(m.inherit).upper()}, SET {str(m.set).upper()}, "
        f"ADMIN {str(m.admin).upper()}"
    )


def revoke_membership_sql(m: Membership) -> str:
    """Revoke one grantor's grant of a membership. An admin option revoked takes with it the
    grants the member made with it (CASCADE): those are undeclared too, and PostgreSQL refuses
    the REVOKE while they exist."""
    cascade = " CASCADE" if m.admin else ""
    return f"REVOKE {ident(m.role)} FROM {ident(m.member)} GRANTED BY {ident(m.grantor)}{cascade}"
