"""Run the same test body through a sync or an async client."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path
from typing import Any

import httpx


class Caller:
    def __init__(self, mode: str, transport: Any, base_url: str = "http://test") -> None:
        self.mode = mode
        self.transport = transport
        if mode == "sync":
            self.client: Any = httpx.Client(transport=transport, base_url=base_url)
        else:
            self.client = httpx.AsyncClient(transport=transport, base_url=base_url)

    async def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        if self.mode == "sync":
            return self.client.request(method, url, **kw)  # type: ignore[no-any-return]
        return await self.client.request(method, url, **kw)  # type: ignore[no-any-return]

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", url, **kw)

    async def close(self) -> None:
        if self.mode == "sync":
            self.client.close()
        else:
            await self.client.aclose()


class Counter:
    """A MockTransport handler numbering the requests it answers."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.calls: list[httpx.Request] = []
        self.status = status
        self.headers = headers or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        status = self.status if request.method in ("GET", "HEAD") else 200
        return httpx.Response(status, json={"n": len(self.calls), "path": request.url.path}, headers=self.headers)

    @property
    def count(self) -> int:
        return len(self.calls)


class Clock:
    """A clock a test moves by hand (``clock.now += 61``)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class TcpProxy:
    """127.0.0.1:``port`` relaying to 127.0.0.1:``target``: ``cut()`` closes every connection and refuses new
    ones until ``mend()``, as a network between one station and its Redis would; ``hold()`` keeps what is
    sent from then on until ``cut()``, which drops it."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.sockets: list[Any] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                s.close()

    def hold(self) -> None:
        self._flowing.clear()

    def cut(self) -> None:
        self.open = False
        with self._lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._flowing.set()  # what was held meets closed sockets: dropped

    def mend(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


class TlsVersionServer:
    """A WATS on https whose certificate a private CA signed (a factory's own), answering
    ``GET /api/App/Version``; the CA's certificate is written to ``ca_file``."""

    def __init__(self, ca_file: Path) -> None:
        import ssl

        import trustme

        ca = trustme.CA()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        ca.cert_pem.write_to_path(str(ca_file))
        self.ca_file = ca_file
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Version)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> TlsVersionServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Version(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"version": "24.1"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass
