"""A throwaway HTTP server on 127.0.0.1, for tests that fetch media by URL without leaving the machine."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["serve_on_loopback"]


@contextmanager
def serve_on_loopback(body: bytes, content_type: str, path: str = "/media") -> Iterator[str]:
    """Serve ``body`` at ``path`` on 127.0.0.1 (any other path: 404) and yield its URL; stopped on exit.

    Runtimes refuse loopback URLs by default (``MediaSettings.allow_private_addresses``); LlamaIndex fetches a
    block's URL itself.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != path:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="gemma-mtp-loopback", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
