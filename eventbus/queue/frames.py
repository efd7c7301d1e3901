"""Fast paths through pika: for the deliveries eventbus's consumers take, and for the frames it writes.

pika turns every frame it reads into objects (a method, its properties, a
header, a body), routes each through its callback registry and the channel's
content assembler, and after each frame copies what is left of its read
buffer. For a consumer that only wants the delivery tag and the body of small
messages, that is most of its time: profiled, a worker draining a queue spent
about 85% of its CPU in pika's frame handling, and so does a bare pika
consumer.

``FastDeliveries`` is a mixin for pika's connection classes. A consumer
registered with ``add_fast_consumer`` gets each delivery whose three frames
(Basic.Deliver, content header, one body frame) have all arrived straight from
the bytes, as ``(delivery_tag, body)``, without pika building objects for it;
the read buffer is walked by offset and cut once per read. Everything else
goes through pika as before, one frame at a time: every other method,
heartbeats, deliveries for other consumers, empty bodies and bodies that span
several frames (larger than the negotiated frame size, 128 KiB by default).
Heartbeat bookkeeping (``bytes_received``) stays pika's.

On the way out, pika hands the transport each frame of a message on its own
(method, header, body), and the transport sends each with a system call of
its own. The mixin joins a message's frames into one write, and joins that
write to the one already waiting for the socket, if any: the transport sends
when the loop next finds the socket writable, so everything written in one
turn of the loop (a batch's publishes, a read's acks) leaves in one ``send``
rather than one per message.

The frame layout is AMQP 0-9-1's (section 4.2.3 of the specification): a type
octet, a channel short, a size long, the payload, and the end octet 0xCE.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pika import frame as pika_frame
from pika.adapters.select_connection import SelectConnection
from pika.adapters.tornado_connection import TornadoConnection

if TYPE_CHECKING:
    from pika.connection import Connection as _Base
else:
    _Base = object

#: Called with (delivery tag, body) for each delivery to a fast consumer.
FastCallback = Callable[[int, bytes], None]

_FRAME_HEAD = struct.Struct(">BHL")  # type, channel, payload size
_METHOD_ID = struct.Struct(">I")  # class id and method id, in one
_DELIVERY_TAG = struct.Struct(">Q")
_BODY_SIZE = struct.Struct(">Q")  # in the header payload, after class id and weight
_HEAD = 7  # bytes before a frame's payload
_METHOD, _HEADER, _BODY = 1, 2, 3
_FRAME_END = 0xCE
_BASIC_DELIVER = (60 << 16) | 60
#: A waiting write grows up to this size; more starts another (a partial send copies what is left of its write).
_JOINED_WRITE_LIMIT = 64 * 1024


class Incomplete:
    """A delivery whose frames have not all arrived yet."""


INCOMPLETE = Incomplete()


def parse_delivery(buf: bytes, offset: int) -> tuple[int, int, bytes, int, bytes] | Incomplete | None:
    """The delivery that starts at ``offset``, if one does there and fits the fast path.

    Returns ``(end, channel, consumer_tag, delivery_tag, body)``, where ``end``
    is the offset just past its last frame; ``INCOMPLETE`` when its frames
    have not all arrived; None when what starts there is anything else, for
    pika to handle (a malformed frame included: pika reports it).
    """
    size = len(buf)
    if size - offset < _HEAD + 4:
        return INCOMPLETE if buf[offset:offset + 1] in (b"", b"\x01") else None
    kind, channel, length = _FRAME_HEAD.unpack_from(buf, offset)
    start = offset + _HEAD
    if kind != _METHOD or _METHOD_ID.unpack_from(buf, start)[0] != _BASIC_DELIVER:
        return None
    header = start + length + 1
    if header > size:
        return INCOMPLETE
    if buf[header - 1] != _FRAME_END:
        return None
    tag_length = buf[start + 4]
    consumer_tag = buf[start + 5:start + 5 + tag_length]
    delivery_tag = _DELIVERY_TAG.unpack_from(buf, start + 5 + tag_length)[0]
    if size - header < _HEAD + 12:
        return INCOMPLETE
    kind, header_channel, length = _FRAME_HEAD.unpack_from(buf, header)
    body_size = _BODY_SIZE.unpack_from(buf, header + _HEAD + 4)[0]
    body = header + _HEAD + length + 1
    if kind != _HEADER or header_channel != channel or body_size == 0:
        return None
    if size - body < _HEAD:
        return INCOMPLETE
    if buf[body - 1] != _FRAME_END:
        return None
    kind, body_channel, length = _FRAME_HEAD.unpack_from(buf, body)
    if kind != _BODY or body_channel != channel or length != body_size:
        return None  # another frame between, or a body in several frames
    end = body + _HEAD + length + 1
    if end > size:
        return INCOMPLETE
    if buf[end - 1] != _FRAME_END:
        return None
    return end, channel, consumer_tag, delivery_tag, buf[body + _HEAD:end - 1]


class FastDeliveries(_Base):
    """Mixin for a pika connection class; see the module docstring. Put it first among the bases."""

    _frame_buffer: bytes  # pika's: what it read and has not parsed yet

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._fast_consumers: dict[tuple[int, bytes], FastCallback] = {}
        super().__init__(*args, **kwargs)

    def add_fast_consumer(self, channel_number: int, consumer_tag: str, callback: FastCallback) -> None:
        """Hand the deliveries to ``consumer_tag`` on that channel to ``callback`` directly.

        They bypass pika's channel, which would reject deliveries that arrive
        for a consumer after its ``basic_cancel``: remove the consumer first.
        """
        self._fast_consumers[(channel_number, consumer_tag.encode())] = callback

    def remove_fast_consumer(self, channel_number: int, consumer_tag: str) -> None:
        """Stop the fast path for that consumer: from now on its deliveries, if any, go through pika."""
        self._fast_consumers.pop((channel_number, consumer_tag.encode()), None)

    def _output_marshaled_frames(self, marshaled_frames: Sequence[bytes]) -> None:
        """Replaces pika's: the frames of one message go to the transport as one write, or join the waiting one."""
        data = marshaled_frames[0] if len(marshaled_frames) == 1 else b"".join(marshaled_frames)
        self.bytes_sent += len(data)
        self.frames_sent += len(marshaled_frames)
        if not self._join_waiting_write(data):
            self._adapter_emit_data(data)

    def _join_waiting_write(self, data: bytes) -> bool:
        """Append ``data`` to the last write the transport holds for the socket; False if it holds none."""
        transport = self._transport
        if transport is None or not transport.get_write_buffer_size():
            return False
        waiting = transport._tx_buffers
        last = waiting[-1]
        if len(last) + len(data) > _JOINED_WRITE_LIMIT:
            return False
        if type(last) is not bytearray:
            last = waiting[-1] = bytearray(last)
        last += data
        transport._tx_buffered_byte_count += len(data)
        return True

    def _on_data_available(self, data_in: bytes) -> None:
        """Replaces pika's: fast consumers' deliveries first, pika for any other frame."""
        buf: bytes = self._frame_buffer + data_in if self._frame_buffer else data_in
        self._frame_buffer = buf
        offset = 0
        consumers = self._fast_consumers
        try:
            while offset < len(buf):
                found = parse_delivery(buf, offset) if consumers else None
                if found is INCOMPLETE:
                    return
                if found is not None:
                    end, channel, consumer_tag, delivery_tag, body = found  # type: ignore[misc]
                    callback = consumers.get((channel, consumer_tag))
                    if callback is not None:
                        self.bytes_received += end - offset
                        self.frames_received += 3
                        offset = end
                        callback(delivery_tag, body)
                        if self._frame_buffer is not buf:
                            return  # the callback closed the connection: pika reset its state
                        continue
                # One frame through pika, as pika's own loop does it.
                rest = buf[offset:]
                consumed, frame_value = pika_frame.decode_frame(rest)
                if not frame_value:
                    return
                buf, offset = rest[consumed:], 0
                self._frame_buffer = buf
                self.bytes_received += consumed
                self._process_frame(frame_value)
                if self._frame_buffer is not buf:
                    return
        finally:
            if self._frame_buffer is buf:
                self._frame_buffer = buf[offset:]


class FastSelectConnection(FastDeliveries, SelectConnection):
    """pika's SelectConnection with the fast paths."""


class FastTornadoConnection(FastDeliveries, TornadoConnection):
    """pika's TornadoConnection with the fast paths."""
