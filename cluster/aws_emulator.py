"""The embedded AWS's process: moto's WSGI application behind waitress, which keeps HTTP connections alive.

moto's own server (``python -m moto.server``) runs on Werkzeug's development server, which closes the connection
after every response and starts a thread per connection: every boto3 call of every process then opens a new TCP
connection, and the emulator pays a thread start and a handshake per call. Real AWS keeps connections alive, as
waitress does here, with a fixed pool of worker threads; the application, and so every wire protocol, is moto's.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from waitress import serve

WORKER_THREADS = 16  # requests handled at once: every replica, consumer and desk may have a call in flight


def _stop(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    serve(DomainDispatcherApplication(create_backend_app), host=args.host, port=args.port, threads=WORKER_THREADS,
          ident="moto", _quiet=True)


if __name__ == "__main__":
    main()
