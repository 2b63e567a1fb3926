"""Spread keep-alive connections over the workers, so that a few clients get every core.

BentoML's workers accept connections from one listening socket that they share. When a burst of connections
arrives, every idle worker is woken and the first to call ``accept`` takes all that are queued: 32 keep-alive
connections opened at once can all land on one worker, which then serves them on one core while the others
idle, for as long as the connections live (measured with wrk: DESIGN.md, "Connections and workers").
BentoML 1.4 offers no per-worker socket (``SO_REUSEPORT``) to let the kernel spread them.

This middleware evens the load out with what HTTP/1.1 already has. Each worker counts the connections that
sent it a request in the last ``WINDOW`` seconds and publishes the count in a small file beside its
siblings' (one folder per server, named after the supervising process). A busy worker (another request in
flight) that holds ``MARGIN`` or more connections than the least busy of its siblings answers its next
request with ``Connection: close``, at most one every ``SHED_EVERY`` seconds. The answer is whole; the
client opens a new connection, which the sibling that waits in ``accept`` (the idle one) is the likelier to
take. Counts even out within a second or two, and then nothing more is closed.

>>> svc.add_asgi_middleware(Spread)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

WINDOW = 1.0  # a connection counts while it has sent a request this recently (seconds)
PUBLISH_EVERY = 0.25  # how often a worker writes its count and reads its siblings'
STALE = 2.0  # a sibling whose count is older has had no request since: it holds no busy connection
MARGIN = 2  # connections above the least busy sibling before one is closed
SHED_EVERY = 0.05  # at most one connection closed per worker this often (seconds)
CLOSE = (b"connection", b"close")


class Spread:
    """Close a connection now and then on a worker that holds more of them than its siblings."""

    def __init__(self, app: ASGIApp, board: Path | None = None):
        self.app = app
        # One folder per server: the workers' common parent is BentoML's supervising process.
        self.board = board or Path(tempfile.gettempdir()) / f"mindtrace-workers-{os.getppid()}"
        self.seen: dict[object, float] = {}  # connection (client address and port) -> its latest request
        self.excess = 0  # connections above the least busy sibling, at the latest count
        self.next_publish = 0.0
        self.last_shed = 0.0
        self.in_flight = 0  # requests this worker is answering
        try:  # at once, before any request: an idle worker's siblings must see it to hand it connections
            self._fd: int | None = self._open()
        except OSError:  # no usable folder: this worker leaves the spreading to the kernel
            self._fd = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self._fd is not None:
            await self.app(scope, self._cleaning(receive), send)
            return
        client = scope.get("client") if scope["type"] == "http" else None
        if client is None or self._fd is None:
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        connection = tuple(client)
        self.seen[connection] = now
        if now >= self.next_publish:
            self.publish(now)
        # Only a busy worker hands connections on: one answering a request at a time has room to spare, and
        # at light load the next connection is as likely to come back to it.
        shed = self.excess >= MARGIN and self.in_flight > 0 and now - self.last_shed >= SHED_EVERY
        if shed:
            self.excess -= 1
            self.last_shed = now
            del self.seen[connection]
        self.in_flight += 1
        try:
            await self.app(scope, receive, _closing(send) if shed else send)
        finally:
            self.in_flight -= 1

    def publish(self, now: float) -> None:
        """Write this worker's count of busy connections and compare it with its live siblings' counts."""
        self.next_publish = now + PUBLISH_EVERY
        self.seen = {c: t for c, t in self.seen.items() if t > now - WINDOW}
        mine = len(self.seen)
        try:
            os.pwrite(self._fd, b"%8d" % mine, 0)
            others = self._siblings()
        except OSError:  # the folder went away: counted again at the next publish
            others = []
        self.excess = mine - min(others) if others else 0

    def _open(self) -> int:
        """This worker's count file, 0 to begin with, removed when the worker shuts down (a killed worker's
        is removed by its siblings)."""
        self.board.mkdir(mode=0o700, exist_ok=True)
        if self.board.stat().st_uid != os.getuid():  # someone else's folder: never trust its counts
            raise PermissionError(f"{self.board} belongs to another user")
        path = self.board / str(os.getpid())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.pwrite(fd, b"%8d" % 0, 0)
        return fd

    def _cleaning(self, receive: Receive) -> Receive:
        """``receive`` that removes this worker's file when the server shuts the worker down."""

        async def receive_and_clean() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                with contextlib.suppress(OSError):
                    os.unlink(self.board / str(os.getpid()))
                    self._siblings()  # removes the files of workers that were killed
                    self.board.rmdir()  # only once the last worker has gone: it is empty then
            return message

        return receive_and_clean

    def _siblings(self) -> list[int]:
        """The counts of the other live workers; a stale count is an idle worker's: 0."""
        counts, wall = [], time.time()
        for entry in os.scandir(self.board):
            if entry.name == str(os.getpid()) or not entry.name.isdigit():
                continue
            try:
                os.kill(int(entry.name), 0)  # signal 0: only asks whether the worker is alive
            except ProcessLookupError:  # a worker that died: its successor writes its own file
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                continue
            except PermissionError:
                continue
            with contextlib.suppress(OSError, ValueError):
                if wall - entry.stat().st_mtime > STALE:
                    counts.append(0)
                else:
                    counts.append(int(Path(entry.path).read_bytes() or b"0"))
        return counts


def _closing(send: Send) -> Send:
    """``send`` that asks the client to close the connection once this answer is through."""

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), CLOSE]}
        await send(message)

    return closing_send
