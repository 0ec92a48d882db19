"""What every fake server of ``antavo_braze.testing`` shares: a threading HTTP server that
forgets clients that went away, run in a background thread, and its lifecycle (start, stop,
context manager). A fake says how to build its server; the rest is here once."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Any, TypeVar

__all__ = ["BackgroundServer", "QuietServer"]

_S = TypeVar("_S", bound="BackgroundServer")


class QuietServer(ThreadingHTTPServer):
    """A server whose handler threads never keep the process alive, and for which a client
    that gave up (a timeout, a dropped connection) is normal, not an error."""

    daemon_threads = True
    allow_reuse_address = True
    fake: Any

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class BackgroundServer:
    """Serves :meth:`_make_server`'s server in a background thread; a context manager."""

    _server: QuietServer | None = None
    _thread: threading.Thread | None = None

    def _make_server(self) -> QuietServer:  # pragma: no cover - every fake defines it
        raise NotImplementedError

    def start(self: _S) -> _S:
        """Start serving in a background thread (idempotent)."""
        if self._server is None:
            server = self._make_server()
            server.fake = self
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=type(self).__name__,
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
