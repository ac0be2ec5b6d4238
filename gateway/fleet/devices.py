"""The MQTT fleet within one process: a bare asyncio protocol per device, and the process's
share of the fleet (`Part`), which connects its devices, paces them and counts their answers.

It has to load a gateway that drains 100k+ messages/s on a 2-core machine, so a device is not a
general client: its topics are encoded once, PUBLISH packets are assembled in bursts and leave in
one write, QoS 1 publishes are pipelined up to a window of packet ids per connection (reused as
PUBACKs return), and the usual PUBACKs are parsed without the codec.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import cast

import mqtt5

from gateway.fleet.common import PACE_TICK, UNLIMITED, FleetError, Progress, device_quota
from gateway.fleet.options import FleetOptions
from gateway.fleet.payloads import KINDS, MALFORMED, SPOOFED, Mix, Payloads
from gateway.fleet.report import FleetReport, KindCounts
from gateway.sources.mqtt.protocol import reason_text
from gateway.sources.mqtt.wire import (
    CONNACK_311,
    DISCONNECT,
    MAX_PACKET_ID,
    encode_connect_311,
    encode_publish,
    encode_string,
)

__all__ = ["Part"]

_BURST = 512  # messages per write: big enough to amortise, small enough to interleave devices
_POLL_TICK = 0.05  # seconds between checks for a stop or the deadline when the rate is unlimited
_CONNECTING = 64  # concurrent connection attempts: more only overflows the broker's backlog
_HANG_UP_TIMEOUT = 5.0  # seconds a broker gets to close the connection after DISCONNECT
_read = mqtt5.read


class _Device(asyncio.Protocol):
    """One device's connection: sends bursts while its window, quota and credit allow."""

    def __init__(self, part: Part, index: int) -> None:
        options = part.options
        self.part = part
        self.index = index
        self.name = options.name(index)
        self.packed = options.packs(index)
        # Each device its own mix, their phases spread evenly: every device sends its share of
        # malformed and spoofed messages (one mix for all would give them to the devices whose
        # turn it happens to be), and equal quotas still add up to the exact totals.
        self.mix = Mix(options.malformed, options.spoofed, (index + 0.5) / options.devices)
        self.header = encode_string(options.topic(self.name, self.packed))
        self.spoof_header = encode_string(options.topic(options.victim(index), self.packed))
        quota = device_quota(options.count, options.devices, index)
        self.quota = UNLIMITED if quota is None else quota
        self.credit = 0
        self.window = options.window if options.qos else _BURST
        self.v311 = options.protocol == "3.1.1"
        self.properties = b"" if self.v311 else b"\x00"  # a PUBLISH's empty properties
        self.inflight: dict[int, int] = {}  # packet id -> kind
        self.next_id = 1
        self.seq = 0
        self.sending = True  # until the quota is spent or sending stops
        self.finished = False  # once every message is answered or the connection failed
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[mqtt5.ConnAckPacket | None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._rest = b""
        self._writable = True
        self._scheduled = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        options = self.part.options
        # The broker binds each device account to its name as client id.
        client_id, password = self.name, options.password_for(self.name)
        if options.protocol == "3.1.1":
            self.transport.write(encode_connect_311(client_id, self.name, password))
            return
        connect = mqtt5.ConnectPacket(
            client_id, username=self.name, password=password.encode(), clean_start=True
        )
        self.transport.write(connect.write())

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self.pump()

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        inflight = self.inflight
        acked = self.part.acked
        end = len(data)
        offset = 0
        while offset < end:
            # Mosquitto's PUBACKs: 4 bytes on success, 5 with another reason and no properties.
            if data[offset] == 0x40 and offset + 1 < end and data[offset + 1] in (2, 3):
                size = data[offset + 1] + 2
                if offset + size > end:
                    self._rest = data[offset:]
                    break
                kind = inflight.pop((data[offset + 2] << 8) | data[offset + 3], -1)
                if kind < 0:
                    self._fail("a PUBACK for a packet id that was not in flight")
                    return
                if size == 4:
                    acked[kind] += 1
                else:
                    self._answered(kind, data[offset + 4])
                offset += size
                continue
            if data[offset] == 0x20 and self.v311:  # a 3.1.1 CONNACK: 4 bytes, no properties
                if offset + 4 > end:
                    self._rest = data[offset:]
                    break
                code = CONNACK_311.get(data[offset + 3], mqtt5.ConnAckReasonCode.UNSPECIFIED_ERROR)
                if not self._control(mqtt5.ConnAckPacket(reason_code=code)):
                    return
                offset += 4
                continue
            try:
                packet, size = _read(memoryview(data)[offset:])
            except IndexError:  # the rest of this packet is still on its way
                self._rest = data[offset:]
                break
            except ValueError as exc:
                self._fail(f"malformed packet from the broker: {exc}")
                return
            offset += size
            if not self._control(packet):
                return
        # Refill once a quarter of the window is free: a write for every few PUBACKs would
        # cost us and the broker a system call each.
        if 4 * (self.window - len(inflight)) >= self.window:
            self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            detail = f": {exc}" if exc is not None else ""
            self._fail(f"connection lost{detail}")
        if not self.connack.done():
            self.connack.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    # answers

    def _answered(self, kind: int, code: int) -> None:
        part = self.part
        part.reasons[code] = part.reasons.get(code, 0) + 1
        if code >= 0x80:
            part.refused[kind] += 1
        else:
            part.acked[kind] += 1

    def _control(self, packet: mqtt5.Packet) -> bool:
        """Handle a packet other than a fast-path PUBACK; False once the connection is failed."""
        if isinstance(packet, mqtt5.PubAckPacket):
            kind = self.inflight.pop(packet.packet_id, -1)
            if kind < 0:
                self._fail("a PUBACK for a packet id that was not in flight")
                return False
            self._answered(kind, int(packet.reason_code))
            return True
        if isinstance(packet, mqtt5.ConnAckPacket) and not self.connack.done():
            self.connack.set_result(packet)
            return True
        if isinstance(packet, mqtt5.DisconnectPacket):
            code = packet.reason_code
            self._fail(f"the broker disconnected it: {code.name.lower()} ({int(code)})")
            return False
        if isinstance(packet, mqtt5.PingRespPacket):
            return True
        self._fail(f"unexpected {type(packet).__name__} from the broker")
        return False

    def _fail(self, why: str) -> None:
        if not self.finished:
            self.part.errors.append(f"{self.name}: {why}")
            self.finish()
        if self.transport is not None:
            self.transport.abort()

    # sending

    def pump(self) -> None:
        """Send what the window, quota and credit allow now, in one write."""
        transport = self.transport
        if self.finished or not self._writable or transport is None:
            return
        inflight = self.inflight
        n = min(self.window - len(inflight), self.quota, self.credit, _BURST)
        if n <= 0:
            if self.quota == 0 and not inflight:
                self.finish()
            return
        self.quota -= n
        self.credit -= n
        part = self.part
        kind_of = self.mix.next
        build = part.payloads.build
        sent = part.sent
        index, first, packed = self.index, self.seq, self.packed
        header, spoof_header, properties = self.header, self.spoof_header, self.properties
        ts = time.time_ns() // 1_000_000
        packets = []
        if part.options.qos:
            packet_id = self.next_id
            for seq in range(first, first + n):
                kind = kind_of()
                payload = build(index, seq, ts, kind == MALFORMED, packed)
                while packet_id in inflight:
                    packet_id = packet_id % MAX_PACKET_ID + 1
                inflight[packet_id] = kind
                packets.append(
                    encode_publish(
                        spoof_header if kind == SPOOFED else header, payload, packet_id, properties
                    )
                )
                packet_id = packet_id % MAX_PACKET_ID + 1
                sent[kind] += 1
            self.next_id = packet_id
        else:
            for seq in range(first, first + n):
                kind = kind_of()
                payload = build(index, seq, ts, kind == MALFORMED, packed)
                packets.append(
                    encode_publish(
                        spoof_header if kind == SPOOFED else header, payload, None, properties
                    )
                )
                sent[kind] += 1
        self.seq = first + n
        transport.write(b"".join(packets))
        if self.quota == 0:
            self._sent_all()
            if not inflight:
                self.finish()
        elif not part.options.qos and self.credit > 0 and not self._scheduled:
            # No PUBACK will call us back: come back after the other devices had their turn.
            self._scheduled = True
            part.loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._scheduled = False
        self.pump()

    def stop_sending(self) -> None:
        self._sent_all()
        if not self.inflight:
            self.finish()

    def _sent_all(self) -> None:
        """Nothing more to send: tell the part, once."""
        if self.sending:
            self.sending = False
            self.quota = 0
            self.part.device_sent_all()

    def finish(self) -> None:
        """Done: every message answered, or the connection failed, or the run ends.

        Says DISCONNECT and lets the broker hang up, which it does once it has read everything
        before it: so even a QoS 0 message counted as sent has reached the broker.
        """
        if self.finished:
            return
        self.finished = True
        self._sent_all()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(DISCONNECT)
        self.part.device_finished()


class Part:
    """One process's share of the fleet: devices `first` to `stop`, its counters and pacing."""

    def __init__(self, options: FleetOptions, first: int, stop: int, run_id: str) -> None:
        self.options = options
        self.run_id = run_id
        self.loop = asyncio.get_running_loop()
        self.payloads = Payloads(run_id, options.readings, options.shape)
        self.sent = [0, 0, 0]  # per kind
        self.acked = [0, 0, 0]
        self.refused = [0, 0, 0]
        self.reasons: dict[int, int] = {}  # non-success PUBACK reason codes
        self.errors: list[str] = []
        self.devices = [_Device(self, index) for index in range(first, stop)]
        self.rate = options.rate * len(self.devices) / options.devices
        self.sent_all: asyncio.Future[None] = self.loop.create_future()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self._active_changed = True
        self._active: list[_Device] = []
        self._sending = self._unfinished = len(self.devices)
        self._cursor = 0

    def progress(self) -> Progress:
        return Progress(sum(self.sent), sum(self.acked), sum(self.refused))

    def device_sent_all(self) -> None:
        self._sending -= 1
        self._active_changed = True
        if self._sending == 0 and not self.sent_all.done():
            self.sent_all.set_result(None)

    def device_finished(self) -> None:
        self._unfinished -= 1
        if self._unfinished == 0 and not self.done.done():
            self.done.set_result(None)

    async def connect(self) -> None:
        """Connect every device; raises FleetError naming a device that failed, if any."""
        limit = asyncio.Semaphore(_CONNECTING)
        results = await asyncio.gather(
            *(self._connect(device, limit) for device in self.devices), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.close()
            first = failures[0]
            if not isinstance(first, FleetError):
                raise first
            more = f" (and {len(failures) - 1} other devices)" if len(failures) > 1 else ""
            raise FleetError(f"{first}{more}")

    async def _connect(self, device: _Device, limit: asyncio.Semaphore) -> None:
        options = self.options
        where = f"{options.host}:{options.port}"
        async with limit:
            try:
                async with asyncio.timeout(options.connect_timeout):
                    await self.loop.create_connection(lambda: device, options.host, options.port)
                    connack = await asyncio.shield(device.connack)
            except TimeoutError:
                raise FleetError(
                    f"{device.name}: no CONNACK from the broker at {where} "
                    f"within {options.connect_timeout:g}s"
                ) from None
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise FleetError(
                    f"{device.name}: cannot reach the broker at {where}: {reason}"
                ) from None
        if connack is None:
            raise FleetError(f"{device.name}: the broker at {where} closed the connection")
        code = connack.reason_code
        if code != mqtt5.ConnAckReasonCode.SUCCESS:
            raise FleetError(
                f"{device.name}: the broker refused the connection: {reason_text(code)}"
            )
        if options.qos:
            device.window = min(device.window, connack.receive_max)

    async def publish(self, stopped: Callable[[], bool], on_tick: Callable[[], None]) -> float:
        """Publish until the quotas, the duration or a stop; then wait for the last answers.

        Returns the seconds from the first publish to the last answer.
        """
        options = self.options
        started = self.loop.time()
        for device in self.devices:
            device.credit = 0 if self.rate else UNLIMITED
            device.pump()
        granted = 0
        tick = PACE_TICK if self.rate else _POLL_TICK
        while not self.sent_all.done():
            await asyncio.wait([self.sent_all], timeout=tick)
            on_tick()
            elapsed = self.loop.time() - started
            if stopped() or (options.duration is not None and elapsed >= options.duration):
                break
            if self.rate:
                target = int(self.rate * elapsed)
                if target > granted:
                    self._grant(target - granted)
                    granted = target
        for device in self.devices:
            device.stop_sending()
        if not self.done.done():
            await asyncio.wait([self.done], timeout=options.drain_timeout)
        on_tick()
        return self.loop.time() - started

    def _grant(self, credit: int) -> None:
        """Share `credit` messages among the devices that still send, round-robin."""
        if self._active_changed:
            self._active = [d for d in self.devices if d.sending]
            self._active_changed = False
        active = self._active
        if not active:
            return
        each, extra = divmod(credit, len(active))
        if each:
            for device in active:
                device.credit += each
        start = self._cursor % len(active)
        lucky = [active[(start + n) % len(active)] for n in range(extra)]
        for device in lucky:
            device.credit += 1
        self._cursor = start + extra
        for device in active if each else lucky:
            device.pump()

    async def close(self) -> None:
        """Disconnect every device; wait for the broker to hang up, or hang up after a while."""
        for device in self.devices:
            device.finish()
        waiting = [d.closed for d in self.devices if d.transport is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=_HANG_UP_TIMEOUT)
        for device in self.devices:
            if device.transport is not None and not device.closed.done():
                device.transport.abort()

    def report(self, duration: float) -> FleetReport:
        reasons = dict(self.reasons)
        successes = sum(self.acked) - sum(n for code, n in reasons.items() if code < 0x80)
        if successes:
            reasons[0] = successes
        return FleetReport(
            devices=len(self.devices),
            processes=1,
            qos=self.options.qos,
            protocol=self.options.protocol,
            readings=self.options.readings,
            planned=self.options.count,
            duration=duration,
            kinds={
                name: KindCounts(self.sent[k], self.acked[k], self.refused[k])
                for k, name in enumerate(KINDS)
            },
            reasons=reasons,
            errors=self.errors,
        )
