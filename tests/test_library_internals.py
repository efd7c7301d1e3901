"""The library internals that eventbus's fast paths rely on are still there, with the shapes they were written for.

Two fast paths go below public APIs on purpose (see docs/benchmarks.md for why):
``eventbus/queue/frames.py`` replaces two methods of pika's ``Connection`` and
uses its frame buffer, counters and transport; ``eventbus/tornado_events/websocket.py``
writes its frames straight to the websocket connection's stream. setup.py
pins the versions they were written for; when an upgrade changes one of these
names anyway, these tests say which, instead of deliveries silently going
astray.
"""

from __future__ import annotations

import inspect

import pika
import pika.connection
import pika.frame
import tornado.websocket

from eventbus.queue.frames import FastSelectConnection

UPGRADE_HINT = "changed in this version; eventbus/queue/frames.py must be updated before setup.py's pin is raised"


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_pika_connection_methods_that_frames_py_replaces_or_calls_are_unchanged() -> None:
    expected = {
        "_on_data_available": ["self", "data_in"],
        "_output_marshaled_frames": ["self", "marshaled_frames"],
        "_process_frame": ["self", "frame_value"],
        "_adapter_emit_data": ["self", "data"],
    }
    for name, names in expected.items():
        method = getattr(pika.connection.Connection, name, None)
        assert method is not None, f"pika.connection.Connection.{name} is gone: {UPGRADE_HINT}"
        assert parameters(method) == names, f"pika.connection.Connection.{name} {UPGRADE_HINT}"
    assert parameters(pika.frame.decode_frame) == ["data_in"], f"pika.frame.decode_frame {UPGRADE_HINT}"


def test_pika_connection_state_that_frames_py_reads_and_writes_is_unchanged() -> None:
    # A connection object made without connecting: its state is what frames.py touches.
    connection = FastSelectConnection(pika.ConnectionParameters(host="127.0.0.1", port=1),
                                      internal_connection_workflow=False)
    assert isinstance(connection._frame_buffer, bytes), f"Connection._frame_buffer {UPGRADE_HINT}"
    # frames.py joins writes to the one the transport holds (its buffers: tests/test_frames.py, on pika's own).
    assert connection._transport is None, f"BaseConnection._transport {UPGRADE_HINT}"
    for counter in ("bytes_received", "frames_received", "bytes_sent", "frames_sent"):
        assert getattr(connection, counter, None) == 0, f"Connection.{counter} {UPGRADE_HINT}"


def test_tornado_websocket_connection_still_exposes_its_stream() -> None:
    hint = "changed in this Tornado; eventbus/tornado_events/websocket.py's _write must be updated"
    protocol = tornado.websocket.WebSocketProtocol13
    assert callable(getattr(protocol, "is_closing", None)), f"WebSocketProtocol13.is_closing {hint}"
    assert "stream" in inspect.get_annotations(protocol), f"WebSocketProtocol13.stream {hint}"
    assert "ws_connection" in inspect.getsource(tornado.websocket.WebSocketHandler.__init__), \
        f"WebSocketHandler.ws_connection {hint}"
