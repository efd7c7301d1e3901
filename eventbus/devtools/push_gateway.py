"""A stand-in for the push notification bouncer: keeps every push in ``<var>/dev/pushes.jsonl``.

Like the bouncer it stands in for, it honours ``Idempotency-Key``: a push sent
again under a key it has seen (a worker killed between sending and recording
the push) is answered as before and not delivered twice.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from eventbus.devtools import append, dev_dir


def start(var_dir: Path | str, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve POST /push in a thread; ``shutdown()`` the returned server to end it."""
    path = dev_dir(var_dir) / "pushes.jsonl"
    seen: set[str] = set()  # Idempotency-Keys of the pushes delivered
    lock = threading.Lock()

    class PushHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            try:
                payload = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            key = self.headers.get("Idempotency-Key")
            with lock:
                repeated = key is not None and key in seen
                if key is not None:
                    seen.add(key)
            if not repeated:
                append(path, {"time": time.time(), "path": self.path, "payload": payload})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"result": "success"}')

        def log_message(self, format: str, *args: object) -> None:
            pass  # run_dev prints what matters; a line per push would drown it

    server = ThreadingHTTPServer((host, port), PushHandler)
    threading.Thread(target=server.serve_forever, name="push gateway", daemon=True).start()
    return server
