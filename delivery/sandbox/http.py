"""HTTP plumbing: the threaded server, its keep-alive request handler, and the replies handlers return."""

from __future__ import annotations

import json
import logging
import socketserver
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import SandboxServer

logger = logging.getLogger(__name__)

Reply = tuple[int, bytes, dict[str, str]]


def json_reply(status: int, data: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})}


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], sandbox: SandboxServer) -> None:
        self.sandbox = sandbox
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup of the host, which can stall on some machines.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _RequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive with Nagle off, so reused connections don't stall on delayed ACKs."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are dropped after this
    server_version = "MailerESPSandbox/1.0"
    server: SandboxHTTPServer

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._reply(*json_reply(411, {"error": "send a Content-Length"}))
            self.close_connection = True
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            reply = self.server.sandbox.dispatch(method, self.path, self.headers, body)
        except Exception:
            logger.exception("ESP sandbox failed on %s %s", method, self.path)
            reply = json_reply(500, {"error": "sandbox internal error"})
        self.server.sandbox.call_answered()
        self._reply(*reply)

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout fired during an injected hang)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature from http.server)
        logger.debug("ESP sandbox: " + format, *args)
