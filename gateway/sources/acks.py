"""The ordered ack window: PUBACKs leave in receive order, whatever order the caller finishes in.

MQTT requires a session's PUBACKs in the order its messages arrived, but the gateway commits
batches of different roles independently, so messages are finished out of order. The window
records each QoS 1 message in receive order and releases packet ids only for the longest finished
prefix; a finished message behind an unfinished one waits. Redelivery after a reconnect then
covers exactly the unreleased messages.
"""

from __future__ import annotations

__all__ = ["AckWindow"]

# Released slots are dropped from the front when the window empties, or in bulk once this many
# have piled up, so that releasing stays O(1) per message without shifting the lists each time.
_COMPACT_AFTER = 4096


class AckWindow:
    """Packet ids of unreleased QoS 1 messages, in receive order, and which of them are done.

    `register` hands out consecutive sequence numbers; `complete` accepts them in any order and
    any number of times; `release` returns the packet ids of the done prefix, each exactly once.
    """

    __slots__ = ("_done", "_first_seq", "_head", "_packet_ids")

    def __init__(self) -> None:
        self._packet_ids: list[int] = []
        # One byte per slot: bytearray.find finds the end of the done prefix at C speed.
        self._done = bytearray()
        self._head = 0  # index of the first unreleased slot
        self._first_seq = 0  # sequence number of slot 0

    def __len__(self) -> int:
        """Messages registered and not yet released (done or not)."""
        return len(self._packet_ids) - self._head

    def register(self, packet_id: int) -> int:
        """Record a message as received; returns its sequence number for `complete`."""
        self._packet_ids.append(packet_id)
        self._done.append(0)
        return self._first_seq + len(self._packet_ids) - 1

    def register_many(self, packet_ids: list[int]) -> int:
        """Record messages received together; returns the first one's sequence number, the
        others following it consecutively (a Kafka fetch: one call, not one per record)."""
        first = self._first_seq + len(self._packet_ids)
        self._packet_ids.extend(packet_ids)
        self._done.extend(bytes(len(packet_ids)))
        return first

    def complete(self, seq: int) -> None:
        """Mark a message done; done or released messages may be completed again harmlessly."""
        index = seq - self._first_seq
        if index >= self._head:
            self._done[index] = 1

    def release(self) -> list[int]:
        """Packet ids of the longest done prefix, in receive order; they are then forgotten."""
        head = self._head
        end = self._done.find(0, head)
        if end < 0:
            end = len(self._done)
        if end == head:
            return []
        released = self._packet_ids[head:end]
        size = len(self._packet_ids)
        if end == size or (end >= _COMPACT_AFTER and end * 2 >= size):
            del self._packet_ids[:end]
            del self._done[:end]
            self._first_seq += end
            end = 0
        self._head = end
        return released
