"""Kafka's side of the registry: the plan that makes SCRAM credentials and ACL bindings follow
it, and its application through the admin protocol.

What an active identity has: a credential of the configured mechanism and no other, and one
ALLOW Write binding on its own topic (or prefix); nothing else that ALLOWs. DENY bindings are an
operator's brake and are never touched. A principal that is not an identity keeps everything
but its ALLOW Write bindings on identities' topics: nothing but the owner may claim an identity.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from gateway.identities.accounts import AccountChange, Credential, IdentityStates
from gateway.topics import TopicTemplate

if TYPE_CHECKING:
    from gateway.config import KafkaAccountsConfig
    from gateway.kafka_admin import AclBinding, KafkaAdmin

__all__ = ["apply_kafka", "identity_binding", "plan_kafka", "unmanaged_principals"]

MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


def unmanaged_principals(config: KafkaAccountsConfig) -> set[str]:
    """Principals that are not identities' and that no identity's change may touch."""
    found = set(config.unmanaged)
    if config.username:
        found.add(f"User:{config.username}")
    return found


def identity_binding(config: KafkaAccountsConfig, name: str) -> AclBinding | None:
    """The one binding an identity holds: Write on its own topic (or prefix); None when there is
    no template, or when the name has the template's separator and so no topic of its own."""
    from gateway.kafka_admin import AclBinding

    if config.topic_template is None or "." in name:
        return None
    topic, prefixed = TopicTemplate(config.topic_template, separator=".").identity_topics(name)
    return AclBinding(
        resource_type="topic",
        resource_name=topic,
        pattern_type="prefixed" if prefixed else "literal",
        principal=f"User:{name}",
        operation="write",
    )


def _covers(config: KafkaAccountsConfig, binding: AclBinding) -> tuple[bool, str | None]:
    """Whether a topic binding reaches identities' topics, and the one identity it is bound to
    when it reaches only that one's (a literal topic, or a prefix that ends after the name)."""
    if config.topic_template is None or binding.resource_type != "topic":
        return False, None
    template = TopicTemplate(config.topic_template, separator=".")
    name = binding.resource_name
    if binding.pattern_type != "prefixed":
        if name == "*":
            return True, None
        claim = template.parse(name)
        return claim is not None, claim[0] if claim else None
    bound = template.prefix_identity(name)
    return bound is not None, bound or None


def plan_kafka(
    identities: IdentityStates,
    users: Mapping[str, Collection[str]],
    bindings: Sequence[AclBinding],
    config: KafkaAccountsConfig,
    *,
    names: Collection[str] | None = None,
    fresh: Collection[str] = (),
) -> list[AccountChange]:
    """The changes that make Kafka's credentials and bindings follow the registry.

    `bindings` are every ALLOW and DENY binding the cluster holds (all resource types);
    identities in `fresh` are being added now, so a credential already of their name was made
    by someone else and is replaced.
    """
    changes: list[AccountChange] = []
    unmanaged = unmanaged_principals(config)
    scope = set(identities) if names is None else {n for n in names if n in identities}
    allowed = [b for b in bindings if b.permission == "allow"]
    held = set(allowed)
    by_principal: dict[str, list[AclBinding]] = {}
    for binding in allowed:
        by_principal.setdefault(binding.principal, []).append(binding)

    def change(
        action: str,
        name: str,
        detail: str,
        binding: AclBinding | None = None,
        mechanism: str | None = None,
    ) -> None:
        changes.append(AccountChange("kafka", action, name, detail, binding, mechanism))

    for name in sorted(scope):
        status, role = identities[name]
        principal = f"User:{name}"
        if principal in unmanaged:
            change("report", name, "identity has the name of an unmanaged principal")
            continue
        mechanisms = set(users.get(name, ()))
        wanted = identity_binding(config, name) if status == "active" else None
        if status == "active":
            if config.mechanism not in mechanisms:
                change("create", name, f"active identity (role {role}) has no credential")
            elif name in fresh:
                change("reset", name, "credential made before the identity: a new password")
            if wanted is None and config.topic_template is not None:
                change("report", name, "name has '.', so no topic of its own: no Write binding")
            elif wanted is not None and wanted not in held:
                change("grant", name, f"missing: {wanted}", wanted)
        for mechanism in sorted(mechanisms - ({config.mechanism} if status == "active" else set())):
            why = "identity is retired" if status != "active" else "a second mechanism"
            change("delete", name, f"{why}: its {mechanism} credential logs in", None, mechanism)
        for binding in by_principal.get(principal, ()):
            if binding != wanted:
                why = "identity is retired" if status != "active" else "wider than its own topic"
                change("revoke", name, f"{why}: {binding}", binding)

    for binding in allowed:
        if binding.operation not in ("write", "all"):
            continue
        reaches, owner = _covers(config, binding)
        if not reaches or binding.principal in unmanaged or binding.principal == f"User:{owner}":
            continue
        subject = binding.principal.removeprefix("User:")
        if subject in identities and (names is None or subject in scope):
            continue  # handled above, with the identity
        if names is not None and owner not in scope:
            continue
        change("revoke", subject, f"may write identities' topics: {binding}", binding)

    if names is None:
        for user in sorted(users.keys() - identities.keys()):
            if f"User:{user}" not in unmanaged:
                change("report", user, "SCRAM user is neither an identity nor declared unmanaged")
    return changes


async def apply_kafka(
    admin: KafkaAdmin,
    changes: Sequence[AccountChange],
    config: KafkaAccountsConfig,
    credentials: Mapping[str, Credential],
) -> None:
    """Carry out Kafka's changes: revocations and deletions first, so nothing is wider at any
    point."""
    from gateway.kafka_admin import ScramCredential

    revoked = [c.binding for c in changes if c.action == "revoke" and c.binding is not None]
    if revoked:
        await admin.delete_acls(revoked)
    for mechanism in MECHANISMS:
        deleted = [c.name for c in changes if c.action == "delete" and c.mechanism == mechanism]
        if deleted:
            await admin.delete_scram(deleted, mechanism=mechanism)
    issued = [
        ScramCredential(c.name, credentials[c.name].password)
        for c in changes
        if c.action in ("create", "reset")
    ]
    if issued:
        await admin.upsert_scram(issued, mechanism=config.mechanism, iterations=config.iterations)
    granted = [c.binding for c in changes if c.action == "grant" and c.binding is not None]
    if granted:
        await admin.create_acls(granted)
