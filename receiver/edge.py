"""The receiver's edge: the limits uvicorn has no setting for, on top of its own HTTP protocol.

uvicorn's settings bound the rest (the launcher, receiver/__main__.py, sets them all):
`--limit-concurrency` (503 beyond that many connections or tasks), `--timeout-keep-alive`
(idle keep-alive connections closed), `--backlog`. It has no limit on the time a client takes
to send a request, and its default parser (httptools) none on the size of a header block: a
client that sends its headers or body slowly, or never finishes them, holds a connection and a
file descriptor for ever, and a 100 MB header value is read, buffered and parsed whole.

`EdgeProtocol` is uvicorn's httptools protocol (uvicorn's h11 protocol has the header limit but
costs the receiver a good share of its rate: docs/benchmarks.md) plus:

- a header block over `max_header_bytes` is refused with 431 and the connection closed, as
  soon as that much has arrived without the end of the headers: nothing beyond one network read
  past the limit is read. The limit is uvicorn's `--h11-max-incomplete-event-size` when given,
  else 16 KiB (h11's own default; Stripe's headers are well under 2 KiB);
- a request's headers must arrive whole within RECEIVER_HEADER_TIMEOUT seconds of the
  connection (or, on a kept-alive connection, of the request's first byte), and its body
  within RECEIVER_BODY_TIMEOUT seconds of its headers; otherwise the connection is closed;
- a connection over `--limit-concurrency` is closed as it arrives, so that many slow or idle
  clients cannot take every file descriptor of the process (uvicorn would keep them open until
  they send a request, then answer 503).

Each closing is one INFO line in uvicorn's log, without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from core.settings import get_settings

MAX_HEADER_BYTES = 16 * 1024

# The connection's lines go where uvicorn logs its own, with its level and handler.
log = logging.getLogger("uvicorn.error")


class HeaderBlockTooLarge(Exception):
    """Raised from the parser's callback to stop parsing a header block over the limit."""


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size limit, read timeouts and a hard cap on
    connections (see the module's docstring). Select it with `--http receiver.edge:EdgeProtocol`."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self.max_header_bytes = config.h11_max_incomplete_event_size or MAX_HEADER_BYTES
        self.header_timeout = settings.receiver_header_timeout
        self.body_timeout = settings.receiver_body_timeout
        self.deadline: asyncio.TimerHandle | None = None
        self.reading_headers = True  # the next bytes belong to a request's header block
        self.header_bytes = 0  # bytes received for that header block so far
        self.too_large = False

    # --- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limit = self.limit_concurrency
        if limit is not None and len(self.connections) > limit:
            log.info("%s: over %d connections, closed at once", self._peer(), limit)
            transport.abort()
            return
        self._arm(self.header_timeout, "its request headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the header block counted, and its refusal answered."""
        if self.reading_headers:
            self.header_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # the receiver serves no websocket
        except httptools.HttpParserError:
            if self.too_large:
                self._refuse_header_block()
            else:
                log.info("%s: invalid HTTP request, answered 400", self._peer())
                self.send_400_response("Invalid HTTP request received.")
            return
        if self.reading_headers and self.header_bytes > self.max_header_bytes:
            self._refuse_header_block()

    # --- the parser's callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline is None:  # a new request on a kept-alive connection
            self._arm(self.header_timeout, "its request headers")

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self.too_large = True
            raise HeaderBlockTooLarge
        self.reading_headers = False
        self._arm(self.body_timeout, "its request body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()  # the request is whole: answering it is the application's business
        self.reading_headers = True
        self.header_bytes = 0
        super().on_message_complete()

    # --- limits -----------------------------------------------------------------------------

    def _arm(self, seconds: float, waiting_for: str) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, self._too_slow, seconds, waiting_for)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _too_slow(self, seconds: float, waiting_for: str) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            log.info("%s: closed, %s took longer than %g s", self._peer(), waiting_for, seconds)
            self.transport.close()

    def _refuse_header_block(self) -> None:
        self._disarm()
        self.reading_headers = False  # nothing more is counted (or read) on this connection
        limit = self.max_header_bytes
        log.info("%s: header block over %d bytes, answered 431", self._peer(), limit)
        message = b"Request header fields too large."
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(message), message)
        )
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
