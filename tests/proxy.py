"""A small forward proxy for the transport tests, run as its own process.

It does what corporate egress proxies do: ``CONNECT host:port`` tunnels (https) and
absolute-form requests (``POST http://host/path``, plain http), optional Basic
``Proxy-Authorization`` (407 otherwise), and it resolves target names itself (``--host
name=ip:port`` maps a name no client can resolve). ``--refuse-connect 403`` answers every
CONNECT with that status, as an egress policy that forbids the destination does. Every tunnel
and forwarded request is appended to ``--log`` as a JSON line. Prints ``listening on PORT``
when ready.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import socket
import threading
from typing import Any

import h11


class Proxy:
    def __init__(
        self,
        auth: str | None,
        hosts: dict[str, tuple[str, int]],
        log: str,
        refuse_connect: int | None = None,
    ) -> None:
        self.auth = None if auth is None else "Basic " + base64.b64encode(auth.encode()).decode()
        self.refuse_connect = refuse_connect
        self.hosts = hosts
        self.log = log
        self.lock = threading.Lock()

    def record(self, **event: Any) -> None:
        with self.lock, open(self.log, "a") as handle:
            handle.write(json.dumps(event) + "\n")

    def resolve(self, host: str, port: int) -> tuple[str, int]:
        return self.hosts.get(f"{host}:{port}", self.hosts.get(host, (host, port)))

    def serve(self, client: socket.socket) -> None:
        with client:
            server = h11.Connection(h11.SERVER)
            request = None
            body = b""
            while True:
                event = server.next_event()
                if event is h11.NEED_DATA:
                    data = client.recv(65536)
                    if not data:
                        return
                    server.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            assert request is not None
            headers = {k.decode().lower(): v.decode() for k, v in request.headers}
            if self.auth is not None and headers.get("proxy-authorization") != self.auth:
                self.record(kind="refused", target=request.target.decode())
                client.sendall(
                    server.send(
                        h11.Response(
                            status_code=407,
                            headers=[
                                ("Proxy-Authenticate", 'Basic realm="test"'),
                                ("Content-Length", "0"),
                                ("Connection", "close"),
                            ],
                        )
                    )
                )
                return
            if request.method == b"CONNECT" and self.refuse_connect is not None:
                self.record(kind="forbidden", target=request.target.decode())
                client.sendall(
                    server.send(
                        h11.Response(
                            status_code=self.refuse_connect,
                            headers=[("Content-Length", "0"), ("Connection", "close")],
                        )
                    )
                )
                return
            if request.method == b"CONNECT":
                self.tunnel(client, server, request.target.decode())
            else:
                self.forward(client, request, headers, body)

    def tunnel(self, client: socket.socket, server: h11.Connection, target: str) -> None:
        host, _, port = target.rpartition(":")
        try:
            upstream = socket.create_connection(self.resolve(host, int(port)), timeout=10)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        self.record(kind="tunnel", target=target)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        leftover, _ = server.trailing_data
        if leftover:
            upstream.sendall(leftover)
        pump = threading.Thread(target=relay, args=(upstream, client), daemon=True)
        pump.start()
        relay(client, upstream)
        pump.join(10)
        upstream.close()

    def forward(
        self, client: socket.socket, request: h11.Request, headers: dict[str, str], body: bytes
    ) -> None:
        target = request.target.decode()
        assert target.startswith("http://"), target
        rest = target[len("http://") :]
        authority, _, path = rest.partition("/")
        host, _, port = authority.partition(":")
        self.record(kind="forward", target=target, method=request.method.decode())
        with socket.create_connection(self.resolve(host, int(port or 80)), timeout=10) as up:
            lines = [f"{request.method.decode()} /{path} HTTP/1.1"]
            for name, value in headers.items():
                if name not in ("proxy-authorization", "connection"):
                    lines.append(f"{name}: {value}")
            lines.append("Connection: close")
            up.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            relay(up, client)


def relay(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--auth")
    parser.add_argument("--host", action="append", default=[])
    parser.add_argument("--refuse-connect", type=int)
    args = parser.parse_args()
    hosts = {}
    for mapping in args.host:
        name, _, target = mapping.partition("=")
        address, _, port = target.rpartition(":")
        hosts[name] = (address, int(port))
    proxy = Proxy(args.auth, hosts, args.log, args.refuse_connect)
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=proxy.serve, args=(client,), daemon=True).start()


if __name__ == "__main__":
    main()
