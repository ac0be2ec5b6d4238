"""Every error the gateway raises on purpose, in one tree.

    GatewayError
    ├── ConfigError             a configuration or roles file is invalid: (path, message) each
    │                           (gateway.validation)
    ├── DatabaseError           PostgreSQL unreachable or refused the login (gateway.db)
    ├── MigrationError          the schema history disagrees with the shipped migrations
    ├── PlanError               the roles declaration cannot be reconciled with the database
    │                           (an immutable id changed, a credential is missing, ...)
    ├── IdentityError           the registry refused a request (tree in gateway.identities.model)
    ├── Reject                  a message that can never succeed; `reason` labels it
    │                           (gateway.decoder; handled inside the pipeline, never raised out)
    ├── ServiceError            a local service (PostgreSQL, Mosquitto, Kafka) failed to start
    ├── FleetError              the simulated fleet could not run (gateway.fleet.common)
    │   └── KafkaFleetError     the Kafka fleet's producer was refused or failed
    ├── KafkaSourceError        Kafka refused authentication or authorization
    ├── KafkaAdminError         Kafka refused an admin request (ACLs, SCRAM credentials) or
    │                           could not be reached for one; carries the broker's error code
    │                           (gateway.kafka_admin)
    └── MqttError               the MQTT transport (also: the client is closed)
        ├── MqttConnectError    no session: the broker refused (carries the reason code), or the
        │                       broker was unreachable, timed out, or failed the TLS handshake
        ├── MqttSubscribeError  the broker refused a subscription (carries the reason codes)
        └── MqttConnectionLost  the connection dropped; `retriable` is True

Each error says whether trying again can help (`retriable`), so callers read an attribute
instead of listing types. A refused CONNECT is retriable only when the broker said it is busy or
unavailable; bad credentials, a refused authorization or a failed certificate check are not.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "GatewayError",
    "MqttConnectError",
    "MqttConnectionLost",
    "MqttError",
    "MqttSubscribeError",
]


class GatewayError(Exception):
    """Base of all gateway errors."""

    retriable: bool = False


class MqttError(GatewayError):
    """The MQTT transport failed, or was used after it was closed."""


class MqttConnectError(MqttError):
    """The connection could not be established; `reason_code` is the CONNACK's when it refused."""

    def __init__(self, message: str, *, reason_code: int | None = None, retriable: bool) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.retriable = retriable


class MqttSubscribeError(MqttError):
    """The broker refused one or more subscriptions; a configuration problem, not retriable."""

    def __init__(self, message: str, *, refused: Sequence[tuple[str, int]]) -> None:
        super().__init__(message)
        self.refused = tuple(refused)
        """Each refused topic filter with the SUBACK reason code the broker gave it."""


class MqttConnectionLost(MqttError):
    """An established connection ended; `reason_code` is the broker's DISCONNECT reason if any."""

    retriable = True

    def __init__(self, message: str, *, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code
