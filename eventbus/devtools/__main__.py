"""``python -m eventbus.devtools --smtp-port S --push-port P``: the SMTP sink and push gateway stand-in."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from eventbus.devtools import push_gateway, smtp_sink
from eventbus.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eventbus.devtools", description=__doc__.split("\n")[0])
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--push-port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every connection at INFO
    var_dir = get_settings().var_dir
    sink = smtp_sink.start(var_dir, args.smtp_port)
    gateway = push_gateway.start(var_dir, args.push_port)
    logging.info("SMTP sink on 127.0.0.1:%d, push gateway on http://127.0.0.1:%d/push; kept under %s/dev",
                 args.smtp_port, args.push_port, var_dir)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    sink.stop()
    gateway.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
