"""The HTTP/1.1 plumbing: a threaded keep-alive server on 127.0.0.1 that routes each request to its API.

Routes: ``/_sim/*`` -> the test hooks (simulator/hooks.py); ``/v2/*``, ``/markets*``, ``/events*``
-> Polymarket's Data API v2 and Gamma (simulator/polymarket_api.py); everything else -> the Dome
API (simulator/dome_api.py, which answers unknown paths, authenticated, with a 404). Every status
is recorded before its first byte is sent, so a client that reads /_sim/stats right after its
answer sees it counted.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import traceback
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from simulator.dome_api import JSON, DomeRoutes, _dumps
from simulator.hooks import SimHooks
from simulator.polymarket_api import PolymarketRoutes, is_polymarket_path

if TYPE_CHECKING:
    from simulator.server import SimServer


class SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a handler stuck on a client never blocks shutdown
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sim: SimServer) -> None:
        self.sim = sim
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, resets) are normal here: only real bugs are printed."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class Handler(DomeRoutes, PolymarketRoutes, SimHooks, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a pooled client reuses its connections
    server_version = "DomeSimulator/1.0"
    timeout = 300  # an idle keep-alive connection frees its thread eventually
    server: SimHTTPServer
    # Per request: where statuses are counted, and headers every response carries (x-trace-id).
    _recorder: Callable[[int | str], None]
    _extra_headers: list[tuple[str, str]]

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without NODELAY, Nagle + delayed ACK
        # would add ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sim._track(self.connection, True)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.sim._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: per-request logs would swamp tests and benchmarks."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing --
    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _record(self, status: int | str) -> None:
        self._recorder(status)

    def _send(
        self,
        status: int,
        body: bytes,
        headers: Iterable[tuple[str, str]] = (),
        record: bool = True,
        content_type: str = JSON,
    ) -> None:
        if record:
            self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (*self._extra_headers, *headers):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_truncated(self, body: bytes) -> None:
        """A 200 whose body stops half way, then the connection closes (the `truncated` fault)."""
        self._record(200)
        self.send_response(200)
        self.send_header("Content-Type", JSON)
        self.send_header("Content-Length", str(len(body)))
        for name, value in self._extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_WR)

    def _error(
        self,
        status: int,
        error: str,
        message: str,
        headers: Iterable[tuple[str, str]] = (),
        record: bool = True,
    ) -> None:
        """A Dome-shaped error `{"error", "message"}` (hooks use it too)."""
        self._send(status, _dumps({"error": error, "message": message}), headers, record)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST and no response at all."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            self.rfile.close()  # the makefile reference would otherwise keep the fd open
            self.connection.close()

    def _dispatch(self, method: str) -> None:
        self._recorder = self.server.sim._stats.respond
        self._extra_headers = []
        try:
            body = self._read_body()
            url = urlsplit(self.path)
            path = url.path.rstrip("/") or "/"
            query = parse_qs(url.query, keep_blank_values=True)
            if path.startswith("/_sim/"):
                self._sim_endpoint(method, path, query, body)
            elif is_polymarket_path(path):
                self._polymarket(method, path, query)
            else:
                self._api(method, path, query)
        except OSError:
            self.close_connection = True
            raise
        except Exception:  # a bug must not kill the connection silently
            traceback.print_exc()
            self.close_connection = True
            self._error(500, "internal_error", "simulator bug, see its stderr")
