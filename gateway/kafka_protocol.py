"""Kafka admin requests aiokafka 0.14 lacks: the ACL requests with many bindings each (its
own carry one), and DescribeUserScramCredentials and AlterUserScramCredentials (API keys 50
and 51, flexible version 0), sent through an `AIOKafkaClient` by `gateway.kafka_admin`.

aiokafka ships no type information, so its base classes are `Any` to mypy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from aiokafka.protocol.admin import (
    CreateAclsRequest_v1,
    DeleteAclsRequest_v1,
    DescribeAclsRequest_v1,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactBytes,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

__all__ = [
    "AclFilter",
    "AlterScram",
    "AlterScramStruct",
    "CreateAcls",
    "DeleteAcls",
    "DescribeAcls",
    "DescribeScram",
]

AclFilter: TypeAlias = tuple[int, str | None, int, str | None, str | None, int, int]
"""Resource type, resource name, pattern type, principal, host, operation, permission (codes;
None matches any, in a filter)."""


class CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]
    API_KEY = 30

    def __init__(self, creations: list[AclFilter]) -> None:
        self._creations = creations

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(self._creations)


class DeleteAcls(Request[DeleteAclsRequest_v1]):  # type: ignore[misc]
    API_KEY = 31

    def __init__(self, filters: list[AclFilter]) -> None:
        self._filters = filters

    def build(self, request_struct_class: type[DeleteAclsRequest_v1]) -> DeleteAclsRequest_v1:
        return request_struct_class(self._filters)


class DescribeAcls(Request[DescribeAclsRequest_v1]):  # type: ignore[misc]
    API_KEY = 29

    def __init__(self, acl_filter: AclFilter) -> None:
        self._filter = acl_filter

    def build(self, request_struct_class: type[DescribeAclsRequest_v1]) -> DescribeAclsRequest_v1:
        return request_struct_class(*self._filter)


_STRING = CompactString("utf-8")


class DescribeScramResponse(Response):  # type: ignore[misc]
    API_KEY = 50
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("error_message", _STRING),
        (
            "results",
            CompactArray(
                ("user", _STRING),
                ("error_code", Int16),
                ("error_message", _STRING),
                (
                    "credential_infos",
                    CompactArray(
                        ("mechanism", Int8), ("iterations", Int32), ("tags", TaggedFields)
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class DescribeScramStruct(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 50
    API_VERSION = 0
    RESPONSE_TYPE = DescribeScramResponse
    # A null array of users asks for every user.
    SCHEMA = Schema(
        ("users", CompactArray(("name", _STRING), ("tags", TaggedFields))),
        ("tags", TaggedFields),
    )


class DescribeScram(Request[DescribeScramStruct]):  # type: ignore[misc]
    API_KEY = 50

    def build(self, request_struct_class: type[DescribeScramStruct]) -> DescribeScramStruct:
        return request_struct_class(None, {})


class AlterScramResponse(Response):  # type: ignore[misc]
    API_KEY = 51
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(
                ("user", _STRING),
                ("error_code", Int16),
                ("error_message", _STRING),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class AlterScramStruct(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 51
    API_VERSION = 0
    RESPONSE_TYPE = AlterScramResponse
    SCHEMA = Schema(
        ("deletions", CompactArray(("name", _STRING), ("mechanism", Int8), ("tags", TaggedFields))),
        (
            "upsertions",
            CompactArray(
                ("name", _STRING),
                ("mechanism", Int8),
                ("iterations", Int32),
                ("salt", CompactBytes),
                ("salted_password", CompactBytes),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )

    def __repr__(self) -> str:
        # aiokafka logs each request's repr at debug level; the salted passwords stay out.
        deletions, upsertions = self.get_item("deletions"), self.get_item("upsertions")
        names = [item[0] for item in upsertions]
        return f"AlterUserScramCredentials(deletions={deletions!r}, upsertions={names!r})"


class AlterScram(Request[AlterScramStruct]):  # type: ignore[misc]
    API_KEY = 51

    def __init__(
        self,
        deletions: Sequence[tuple[str, int]],
        upsertions: Sequence[tuple[str, int, int, bytes, bytes]],
    ) -> None:
        """Deletions are (user, mechanism code); upsertions (user, mechanism code, iterations,
        salt, salted password)."""
        self._deletions: list[tuple[object, ...]] = [(*item, {}) for item in deletions]
        self._upsertions: list[tuple[object, ...]] = [(*item, {}) for item in upsertions]

    def build(self, request_struct_class: type[AlterScramStruct]) -> AlterScramStruct:
        return request_struct_class(self._deletions, self._upsertions, {})
