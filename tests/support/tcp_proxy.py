"""A loopback TCP proxy the test controls, to cut a broker connection at a chosen moment.

``TcpProxy()`` listens on 127.0.0.1 (a free port) and forwards every connection to the upstream address
(RabbitMQ on 127.0.0.1:5672 by default), one thread per direction. The test can then:

- ``cut()``: close every live connection at once; new ones are accepted and reset at once until ``heal()``;
- ``cut_after(bytes_client_to_server=N)``: forward exactly N more bytes upstream, then cut, so the cut lands at
  a fixed point of the byte stream (for example inside the frames of one publish);
- ``cut_after(messages_client_to_server=K)``: forward up to the last byte of the K-th more AMQP message (a
  ``basic.publish`` with its header and body frames), then cut: the broker gets the whole message, the client
  never sees its confirm;
- ``stall()`` / ``resume()``: stop forwarding either way while every connection stays open (a broker that stops
  answering, as under a memory alarm), then forward what was held; ``stall_after(...)`` arms a stall like
  ``cut_after``;
- ``on_cut``: a callback run in the proxy's thread just before the sockets close (to break something else at
  the same instant).

Counters: ``bytes_up`` / ``bytes_down`` (forwarded client→server / server→client), ``publishes`` and
``messages`` (``basic.publish`` frames and whole messages forwarded upstream, over all connections),
``accepted``, ``refused``, ``cuts``, ``stalls``, and ``publishes_at_cut`` / ``messages_at_cut`` (when the last cut or
armed stall fell). ``wait_settled()`` waits until the server has closed every connection the proxy closed (so it has
read all that was forwarded).

What went upstream reaches the broker before the upstream side closes (a FIN after the data, never a reset);
nothing the broker answers after the cut was armed to fall reaches the client, which is reset at once.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["AmqpFrames", "TcpProxy"]

_AMQP_PREAMBLE = 8  # b"AMQP\x00\x00\x09\x01"
_METHOD, _HEADER, _BODY = 1, 2, 3
_BASIC_PUBLISH = (60, 40)


class AmqpFrames:
    """Follows one client→server AMQP 0-9-1 byte stream and says where publishes and whole messages end."""

    def __init__(self) -> None:
        self._buffer = b""
        self._preamble = _AMQP_PREAMBLE
        self._body_left: int | None = None  # body bytes still to come for the current publish

    def feed(self, data: bytes) -> list[tuple[int, str]]:
        """Take the next bytes; answer (offset in `data` just past the frame, "publish" | "message") events."""
        events: list[tuple[int, str]] = []
        start = len(self._buffer)
        self._buffer += data
        pos = 0
        if self._preamble:
            pos = min(self._preamble, len(self._buffer))
            self._preamble -= pos
        while len(self._buffer) - pos >= 7:
            kind, _, size = struct.unpack_from(">BHI", self._buffer, pos)
            end = pos + 7 + size + 1
            if len(self._buffer) < end:
                break
            payload = memoryview(self._buffer)[pos + 7 : pos + 7 + size]
            if kind == _METHOD and size >= 4 and struct.unpack_from(">HH", payload) == _BASIC_PUBLISH:
                events.append((end - start, "publish"))
                self._body_left = None
            elif kind == _HEADER and size >= 12:
                self._body_left = struct.unpack_from(">Q", payload, 4)[0]
            elif kind == _BODY and self._body_left is not None:
                self._body_left -= size
            if kind in (_HEADER, _BODY) and self._body_left == 0:
                self._body_left = None
                events.append((end - start, "message"))
            pos = end
        self._buffer = self._buffer[pos:]
        return events


@dataclass(eq=False)
class _Link:
    client: socket.socket
    upstream: socket.socket
    frames: AmqpFrames = field(default_factory=AmqpFrames)
    closed: bool = False
    muted: bool = False  # a cut is about to fall: nothing more goes back to the client


class TcpProxy:
    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._closed = threading.Condition(self._lock)
        self._links: list[_Link] = []
        self._closing: list[_Link] = []  # cut or closed on the client side, upstream not yet closed by the server
        self._threads: list[threading.Thread] = []
        self._down = False
        self._stopping = False
        self._flowing = threading.Event()  # cleared by stall(): the pumps hold what they read
        self._flowing.set()
        self._bytes_left: int | None = None  # armed: bytes still allowed upstream
        self._messages_left: int | None = None  # armed: whole messages still allowed upstream
        self._action = "cut"  # what the armed trigger does: "cut" or "stall"
        self.on_cut: Callable[[], None] | None = None
        self.errors: list[Exception] = []  # raised inside the proxy's threads (a bug in the proxy, not the test)
        self.bytes_up = self.bytes_down = 0
        self.publishes = self.messages = 0
        self.accepted = self.refused = self.cuts = self.stalls = 0
        self.publishes_at_cut: int | None = None  # at the last cut or armed stall
        self.messages_at_cut: int | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]

    # ---- life ------------------------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._spawn(self._accept_loop, "proxy-accept")
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._flowing.set()
            links, closing = list(self._links), list(self._closing)
        _shutdown(self._listener)  # wakes the accept loop
        self._listener.close()
        for link in links:
            self._close(link)
        for link in links + closing:
            _shutdown(link.upstream)  # no lingering at the end
        for thread in list(self._threads):
            thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.errors:
            raise AssertionError(f"the proxy itself failed: {self.errors!r}")

    def amqp_url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}//"

    # ---- control ---------------------------------------------------------------------------------------

    @property
    def is_cut(self) -> bool:
        return self._down

    @property
    def live_connections(self) -> int:
        with self._lock:
            return len(self._links)

    def wait_settled(self, timeout: float = 10.0) -> None:
        """Wait until the server has closed every connection the proxy closed: it has read all we forwarded."""
        with self._closed:
            if not self._closed.wait_for(lambda: not self._closing, timeout):
                raise AssertionError(f"the server kept {len(self._closing)} cut connection(s) open for {timeout}s")

    def stall(self) -> None:
        """Forward nothing more either way but keep every connection open (a broker that stops answering)."""
        with self._lock:
            self._flowing.clear()
            self.stalls += 1

    def resume(self) -> None:
        """Forward again, starting with what was held."""
        self._flowing.set()

    def cut(self) -> None:
        """Close every live connection now and refuse new ones until heal()."""
        self._cut()

    def heal(self) -> None:
        with self._lock:
            self._down = False
            self._bytes_left = self._messages_left = None

    def cut_after(
        self, *, bytes_client_to_server: int | None = None, messages_client_to_server: int | None = None
    ) -> None:
        """Arm a cut after that many more bytes, or right after that many more whole messages, went upstream."""
        self._arm("cut", bytes_client_to_server, messages_client_to_server)

    def stall_after(
        self, *, bytes_client_to_server: int | None = None, messages_client_to_server: int | None = None
    ) -> None:
        """Like cut_after, but stall() instead of cutting: the connections stay open, nothing moves till resume()."""
        self._arm("stall", bytes_client_to_server, messages_client_to_server)

    def _arm(self, action: str, after_bytes: int | None, after_messages: int | None) -> None:
        if (after_bytes is None) == (after_messages is None):
            raise ValueError("give exactly one of bytes_client_to_server, messages_client_to_server")
        if (after_bytes or after_messages or 0) < 1:
            raise ValueError("the trigger must come after at least one byte or message")
        with self._lock:
            self._action, self._bytes_left, self._messages_left = action, after_bytes, after_messages

    # ---- inside ----------------------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        def run() -> None:
            try:
                target(*args)
            except Exception as exc:  # a proxy bug must fail the test, not hang it: drop the link and say why
                self.errors.append(exc)
                for arg in args:
                    if isinstance(arg, _Link):
                        self._close(arg)
                        _shutdown(arg.upstream)

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refuse = self._down or self._stopping
                self.refused += refuse
            if refuse:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, upstream)
            with self._lock:
                refuse = self._down or self._stopping  # cut while we were connecting
                if refuse:
                    self.refused += 1
                else:
                    self._links.append(link)
                    self.accepted += 1
            if refuse:
                _reset(client)
                upstream.close()
                continue
            self._spawn(self._pump_up, "proxy-up", link)
            self._spawn(self._pump_down, "proxy-down", link)

    def _pump_up(self, link: _Link) -> None:
        while True:
            try:
                data = link.client.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._close(link)
                return
            with self._lock:
                events = link.frames.feed(data)
            done = 0
            while done < len(data):
                self._flowing.wait()
                with self._lock:
                    if link.closed:
                        return
                    upto, action = self._allowance(data, done, events)
                    if action == "cut":
                        link.muted = True  # the broker's answer to what goes now never reaches the client
                    elif action == "stall":
                        self._flowing.clear()  # before the bytes go: their answer is held too
                        self.stalls += 1
                try:
                    link.upstream.sendall(data[done:upto])
                except OSError:
                    self._close(link)
                    return
                done = upto
                if action == "cut":
                    self._cut()
                    return

    def _allowance(self, data: bytes, done: int, events: list[tuple[int, str]]) -> tuple[int, str | None]:
        """Where the bytes from `done` on stop going upstream, and the armed action that falls there (lock held)."""
        upto, action = len(data), None
        if self._bytes_left is not None and self._bytes_left <= upto - done:
            upto, action = done + self._bytes_left, self._action
        if self._messages_left is not None:
            ends = [end for end, what in events if what == "message" and end > done]
            if len(ends) >= self._messages_left and (action is None or ends[self._messages_left - 1] < upto):
                upto, action = ends[self._messages_left - 1], self._action
        forwarded = [what for end, what in events if done < end <= upto]
        if self._bytes_left is not None:
            self._bytes_left -= upto - done
        if self._messages_left is not None:
            self._messages_left -= forwarded.count("message")
        self.bytes_up += upto - done
        self.publishes += forwarded.count("publish")
        self.messages += forwarded.count("message")
        if action is not None:
            self._bytes_left = self._messages_left = None
            self.publishes_at_cut, self.messages_at_cut = self.publishes, self.messages
        return upto, action

    def _pump_down(self, link: _Link) -> None:
        while True:
            try:
                data = link.upstream.recv(65536)
            except OSError:
                data = b""
            self._flowing.wait()
            if not data:  # the server closed (after a cut: it has read everything we forwarded)
                self._close(link)
                link.upstream.close()
                with self._closed:
                    self._closing = [other for other in self._closing if other is not link]
                    self._closed.notify_all()
                return
            with self._lock:
                if link.closed or link.muted:
                    continue  # keep reading until the server closes its side
                self.bytes_down += len(data)
            try:
                link.client.sendall(data)
            except OSError:
                self._close(link)

    def _cut(self) -> None:
        with self._lock:
            self._down = True
            self._bytes_left = self._messages_left = None
            self.cuts += 1
            self.publishes_at_cut, self.messages_at_cut = self.publishes, self.messages
            for link in self._links:
                link.muted = True
            links = list(self._links)
        if self.on_cut is not None:
            self.on_cut()
        for link in links:
            self._close(link)

    def _close(self, link: _Link) -> None:
        with self._lock:
            if link.closed:
                return
            link.closed = link.muted = True
            self._links.remove(link)
            self._closing.append(link)
        _reset(link.client)
        try:
            link.upstream.shutdown(socket.SHUT_WR)  # a FIN after what was forwarded: the broker reads it all
        except OSError:
            pass


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _reset(sock: socket.socket) -> None:
    """Wake any reader, then close with a reset (SO_LINGER 0): the peer's next read or write fails."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    _shutdown(sock)
    sock.close()
