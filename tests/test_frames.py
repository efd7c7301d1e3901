"""The fast path for deliveries (eventbus.queue.frames), on frames that pika itself encodes.

The byte streams here are what RabbitMQ sends, built with pika's own frame
classes. The connection under the mixin is a recorder of what reaches pika's
frame handling; the same path against a real RabbitMQ is covered in
test_consume.py and by every consumer test.
"""

from __future__ import annotations

import random
import socket
from typing import Any

import pika.adapters.utils.io_services_utils as pika_io
import pika.exceptions
import pika.frame
import pika.spec
import pytest

from eventbus.queue.frames import INCOMPLETE, FastDeliveries, parse_delivery

CHANNEL = 1
TAG = "ctag1.abc"


def deliver(delivery_tag: int, body: bytes, *, tag: str = TAG, channel: int = CHANNEL,
            frame_max: int = 131072) -> bytes:
    """The frames of one delivery, as RabbitMQ sends them: body frames of at most ``frame_max`` bytes."""
    method = pika.spec.Basic.Deliver(consumer_tag=tag, delivery_tag=delivery_tag, redelivered=False,
                                     exchange="", routing_key="q")
    properties = pika.spec.BasicProperties(content_type="application/json", delivery_mode=2)
    frames = [pika.frame.Method(channel, method).marshal(), pika.frame.Header(channel, len(body), properties).marshal()]
    limit = frame_max - 8
    frames += [pika.frame.Body(channel, body[i:i + limit]).marshal() for i in range(0, len(body), limit)]
    return b"".join(frames)


def heartbeat() -> bytes:
    return pika.frame.Heartbeat().marshal()


def basic_ack(delivery_tag: int) -> bytes:
    return pika.frame.Method(CHANNEL, pika.spec.Basic.Ack(delivery_tag=delivery_tag)).marshal()


class PikaSide:
    """What the mixin needs of pika's Connection: it records the frames handed to pika."""

    def __init__(self) -> None:
        self._frame_buffer = b""
        self.bytes_received = 0
        self.frames_received = 0
        self.bytes_sent = 0
        self.frames_sent = 0
        self._transport: Any = None
        self.seen: list[Any] = []

    def _adapter_emit_data(self, data: bytes) -> None:
        if self._transport is not None:  # as pika's BaseConnection does
            self._transport.write(data)
        else:
            self.seen.append(("write", data))

    def _process_frame(self, frame_value: Any) -> None:
        self.frames_received += 1
        self.seen.append(("pika", type(frame_value).__name__, getattr(frame_value, "fragment", None)))


class Connection(FastDeliveries, PikaSide):
    def __init__(self) -> None:
        super().__init__()
        self.add_fast_consumer(CHANNEL, TAG, lambda tag, body: self.seen.append(("fast", tag, body)))


def feed(connection: Connection, stream: bytes, cuts: list[int]) -> None:
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        connection._on_data_available(stream[start:end])


def fast(n: int) -> list[Any]:
    return [("fast", i, b'{"n": %d}' % i) for i in range(1, n + 1)]


def test_whole_deliveries_take_the_fast_path_and_count_as_received() -> None:
    stream = b"".join(deliver(i, b'{"n": %d}' % i) for i in range(1, 51))
    connection = Connection()
    feed(connection, stream, [])
    assert connection.seen == fast(50)
    assert connection.bytes_received == len(stream)  # pika's heartbeat checker reads this
    assert connection.frames_received == 150
    assert connection._frame_buffer == b""


def test_a_stream_cut_anywhere_gives_the_same_deliveries() -> None:
    stream = deliver(1, b'{"n": 1}') + heartbeat() + deliver(2, b'{"n": 2}') + deliver(3, b'{"n": 3}')
    for cut in range(1, len(stream)):
        connection = Connection()
        feed(connection, stream, [cut])
        assert [s for s in connection.seen if s[0] == "fast"] == fast(3), cut
        assert connection.bytes_received == len(stream)
        assert connection._frame_buffer == b""


def test_random_reads_of_a_long_stream() -> None:
    rng = random.Random(7)
    stream = b"".join(deliver(i, b'{"n": %d}' % i) for i in range(1, 301))
    connection = Connection()
    feed(connection, stream, sorted(rng.sample(range(1, len(stream)), 200)))
    assert connection.seen == fast(300)


def test_other_frames_go_to_pika_in_order() -> None:
    stream = deliver(1, b'{"n": 1}') + heartbeat() + basic_ack(9) + deliver(2, b'{"n": 2}')
    connection = Connection()
    feed(connection, stream, [])
    assert connection.seen == [fast(1)[0], ("pika", "Heartbeat", None), ("pika", "Method", None), fast(2)[1]]


def test_deliveries_the_fast_path_does_not_take_go_to_pika_whole() -> None:
    big = b'"' + b"x" * 200_000 + b'"'  # two body frames
    stream = (deliver(1, b"{}", tag="someone-else") + deliver(2, b"") + deliver(3, big, frame_max=131072)
              + deliver(4, b'{"n": 4}', channel=2))
    connection = Connection()
    feed(connection, stream, [])
    kinds = [s[1] for s in connection.seen]
    assert all(s[0] == "pika" for s in connection.seen)
    # someone-else: method, header, body; empty: method, header; big: method, header, two bodies; channel 2: three.
    assert kinds == ["Method", "Header", "Body", "Method", "Header", "Method", "Header", "Body", "Body",
                     "Method", "Header", "Body"]
    assert connection.bytes_received == len(stream)


def test_a_removed_consumer_goes_back_to_pika() -> None:
    connection = Connection()
    connection.remove_fast_consumer(CHANNEL, TAG)
    feed(connection, deliver(1, b"{}"), [])
    assert [s[0] for s in connection.seen] == ["pika"] * 3


def test_a_callback_that_raises_leaves_the_rest_of_the_read_for_later() -> None:
    connection = Connection()
    calls: list[int] = []

    def callback(tag: int, _body: bytes) -> None:
        calls.append(tag)
        if tag == 2:
            raise RuntimeError("consumer failed")

    connection.add_fast_consumer(CHANNEL, TAG, callback)
    with pytest.raises(RuntimeError):
        feed(connection, b"".join(deliver(i, b"{}") for i in (1, 2, 3)), [])
    assert calls == [1, 2]
    feed(connection, deliver(4, b"{}"), [])
    assert calls == [1, 2, 3, 4]


def test_a_corrupt_frame_end_is_pikas_error() -> None:
    stream = bytearray(deliver(1, b'{"n": 1}'))
    stream[-1] = 0  # the body frame's end octet
    connection = Connection()
    with pytest.raises(pika.exceptions.InvalidFrameError):
        feed(connection, bytes(stream), [])


def test_parse_delivery_says_what_is_missing() -> None:
    stream = deliver(5, b'{"n": 5}')
    for cut in range(1, len(stream)):
        assert parse_delivery(stream[:cut], 0) is INCOMPLETE, cut
    end, channel, tag, delivery_tag, body = parse_delivery(stream + heartbeat(), 0)  # type: ignore[misc]
    assert (end, channel, tag, delivery_tag, body) == (len(stream), CHANNEL, TAG.encode(), 5, b'{"n": 5}')
    assert parse_delivery(heartbeat(), 0) is None


def test_the_frames_of_a_message_go_out_as_one_write() -> None:
    connection = Connection()
    frames = [pika.frame.Method(1, pika.spec.Basic.Publish(exchange="", routing_key="q")).marshal(),
              pika.frame.Header(1, 2, pika.spec.BasicProperties()).marshal(), pika.frame.Body(1, b"{}").marshal()]
    connection._output_marshaled_frames(frames)
    connection._output_marshaled_frames([heartbeat()])
    assert connection.seen == [("write", b"".join(frames)), ("write", heartbeat())]
    assert (connection.bytes_sent, connection.frames_sent) == (len(b"".join(frames)) + len(heartbeat()), 4)


class Loop:
    """The part of pika's I/O services a transport uses: it records whether the transport waits to write."""

    def __init__(self) -> None:
        self.writer: Any = None

    def set_reader(self, fd: int, callback: Any) -> None:
        pass

    def set_writer(self, fd: int, callback: Any) -> None:
        self.writer = callback

    def remove_writer(self, fd: int) -> None:
        self.writer = None


def publish_frames(n: int) -> list[bytes]:
    body = b'{"n": %d}' % n
    return [pika.frame.Method(1, pika.spec.Basic.Publish(exchange="", routing_key="q")).marshal(),
            pika.frame.Header(1, len(body), pika.spec.BasicProperties()).marshal(), pika.frame.Body(1, body).marshal()]


def test_what_one_turn_of_the_loop_writes_leaves_in_one_send() -> None:
    # A connection on pika's own plaintext transport, over a real socket pair
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    loop, connection = Loop(), Connection()
    transport = pika_io._AsyncPlaintextTransport(ours, None, loop)
    sends: list[int] = []
    send = transport._sigint_safe_send
    transport._sigint_safe_send = lambda sock, data: sends.append(len(data)) or send(sock, data)  # type: ignore
    connection._transport = transport
    try:
        # When 200 messages and a heartbeat are written before the loop finds the socket writable
        for n in range(200):
            connection._output_marshaled_frames(publish_frames(n))
        connection._output_marshaled_frames([heartbeat()])
        assert loop.writer is not None
        loop.writer()

        # Then they left in order, in one send per 64 KiB at most, and the transport waits for nothing more
        expected = b"".join(b"".join(publish_frames(n)) for n in range(200)) + heartbeat()
        received = b""
        while len(received) < len(expected):
            received += theirs.recv(1 << 20)
        assert received == expected
        assert len(sends) == 1 + len(expected) // (64 * 1024)
        assert loop.writer is None and transport.get_write_buffer_size() == 0
        assert (connection.bytes_sent, connection.frames_sent) == (len(expected), 601)

        # and the next write after that waits for the loop again, on its own
        connection._output_marshaled_frames([heartbeat()])
        assert loop.writer is not None and transport.get_write_buffer_size() == len(heartbeat())
    finally:
        ours.close()
        theirs.close()
