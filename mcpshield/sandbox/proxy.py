"""The egress proxy of a sandbox whose `network` lists hosts: the server's only way out. It tunnels
`CONNECT host:port` and forwards absolute-form `http://` requests to the hosts `[sandbox] network`
allows and `network_deny` does not list, and answers everything else itself."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from mcpshield.errors import SandboxError
from mcpshield.policy.hosts import HostSet, canonical_host, host_readings, url_host

# anyio's stream classes and the wire format (httphead) are imported where a connection needs
# them: start-up stays cheap, and a server that never connects never loads them.
if TYPE_CHECKING:
    from anyio.abc import ByteReceiveStream, ByteStream, SocketListener, SocketStream
    from anyio.streams.buffered import BufferedByteReceiveStream

    from mcpshield.sandbox.httphead import Request

#: A request head (request line and header fields) longer than this is answered 431: real
#: clients send a few hundred bytes, and the head is held in memory while the proxy decides.
MAX_HEAD_BYTES: Final = 16 * 1024
#: The response heads relayed for one request (interim 1xx ones and the final one together):
#: cookies make them larger than requests'.
MAX_RESPONSE_HEAD_BYTES: Final = 64 * 1024
#: A client has this long to send its whole request head (408 after): a client that stalls
#: half-way must not hold a connection slot.
HEAD_TIMEOUT_S: Final = 10.0
#: Resolving a host and connecting to it, every address together (504 after).
CONNECT_TIMEOUT_S: Final = 15.0
#: Connections served at once; more are answered 503. Each holds two descriptors in mcpshield's
#: own process, beside the relay's, under the usual limit of 1024.
MAX_CONNECTIONS: Final = 128
#: Once one side of a connection has finished sending, the other side gets this long to finish
#: too: a client that half-closes still gets its answer, a peer that never closes cannot keep a
#: connection slot. An open tunnel has no idle limit (see docs/decisions.md).
HALF_CLOSED_LINGER_S: Final = 60.0
#: Bound on handing a client one of the proxy's own short answers and seeing it close.
ANSWER_TIMEOUT_S: Final = 2.0
#: Read and dropped after an answer, so that closing does not reset the connection (a reset can
#: discard the answer before the client reads it).
MAX_DRAIN_BYTES: Final = 64 * 1024
#: Pause before accepting again after accept() failed (out of descriptors, most likely).
ACCEPT_RETRY_S: Final = 0.1
#: The proxy's Unix socket: only its owner connects (its folder is private too).
SOCKET_MODE: Final = 0o600
#: The peer went away or broke the connection: that connection ends, nothing else does.
#: 0.0.0.0/8, "this network": a connection to it reaches this machine, as does `::`.
_THIS_NETWORK: Final = ipaddress.ip_network("0.0.0.0/8")
_GONE: Final = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    """The proxy's bounds; the defaults are the module's constants (tests shrink them)."""

    max_head_bytes: int = MAX_HEAD_BYTES
    head_timeout_s: float = HEAD_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    half_closed_linger_s: float = HALF_CLOSED_LINGER_S
    answer_timeout_s: float = ANSWER_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class ProxyDecision:
    """What the proxy did with one connection's request: given to `on_decision` once, when known.

    Never holds a path, query or header: they may carry credentials."""

    #: The policy let the request through (it may still have failed upstream: 502, 504).
    allowed: bool
    #: CONNECT, GET, ...; "" when no request could be read.
    method: str
    #: Canonical where it could be read so, else as written (escaped, cut); "" when unknown.
    host: str
    #: 0 when unknown.
    port: int
    #: The status the proxy answered; None when it forwarded a request and the host answered.
    status: int | None
    reason: str

    def as_event(self) -> dict[str, Any]:
        """The decision as a fresh audit-log event body, worded as the log's request events are
        (`decision`: allow or deny)."""
        event = asdict(self)
        event["decision"] = "allow" if event.pop("allowed") else "deny"
        return event


class _Answer(Exception):  # control flow inside a connection; never leaves this module
    """The proxy answers the client itself with `status` and ends the connection."""

    def __init__(self, status: int, reason: str, *, allowed: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.allowed = allowed


class _Seen:
    """What one connection's request said so far, for its decision."""

    __slots__ = ("host", "method", "port")

    def __init__(self) -> None:
        self.method = ""
        self.host = ""
        self.port = 0


class EgressProxy:
    """Serves one sandboxed server's egress: `allow` and `deny` are `hosts` entries (names, `*.`
    globs, CIDR ranges, `*`; `deny` is checked first). `on_decision` hears of every request
    decided, synchronously; `on_error` of what went wrong inside the proxy (a bug costing one
    connection, `on_decision` raising), one line each."""

    def __init__(
        self,
        allow: Sequence[str],
        deny: Sequence[str],
        on_decision: Callable[[ProxyDecision], None] | None = None,
        *,
        on_error: Callable[[str], None] | None = None,
        limits: ProxyLimits = ProxyLimits(),  # frozen: one default shared safely
        stopped: Callable[[], str | None] | None = None,
    ) -> None:
        """Raises ValueError for an entry a profile could not hold (`check_host_entry`). While
        `stopped` gives a reason (the audit log cannot be written and the profile says stop),
        every request is refused with 503."""
        self._allow = HostSet(allow)
        self._deny = HostSet(deny)
        self._on_decision = on_decision
        self._on_error = on_error
        self._limits = limits
        self._stopped = stopped
        self._active = 0

    async def serve(self, listener: SocketListener | socket.socket) -> None:
        """Accepts and serves connections on the listening socket (or anyio listener) until
        cancelled; close it only after that. Connections come as transport-based streams, Unix
        ones too: anyio's raw-socket UNIX streams fail a loop callback when a pending read is
        cancelled just as data arrives, which a proxy cancelling reads on timeouts would hit."""
        sock = listener if isinstance(listener, socket.socket) else _raw_socket(listener)
        sock.setblocking(False)
        failing = False
        async with anyio.create_task_group() as tg:
            while True:
                await anyio.wait_readable(sock)
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue  # the client gave up before we took it
                except OSError as exc:
                    if not failing:
                        self._error(f"the egress proxy cannot accept a connection ({_why(exc)}); retrying")
                    failing = True
                    # Out of descriptors: the socket stays readable, and only time frees one.
                    await anyio.sleep(ACCEPT_RETRY_S)
                    continue
                failing = False
                try:
                    client = await _stream(conn)
                except Exception:  # reset before it was wrapped (not connected any more): drop it
                    conn.close()
                    continue
                except BaseException:  # cancelled: the socket is ours to close
                    conn.close()
                    raise
                if self._active >= self._limits.max_connections:
                    await self._busy(client)
                    continue
                self._active += 1
                tg.start_soon(self._connection, client)

    async def _busy(self, client: SocketStream) -> None:
        """Answers 503 in the accept loop itself, so that refusals cannot pile up either."""
        from mcpshield.sandbox import httphead

        reason = f"already serving {self._limits.max_connections} connections"
        self._decided(_Seen(), False, 503, reason)
        with contextlib.suppress(*_GONE), anyio.move_on_after(self._limits.answer_timeout_s):
            await client.send(httphead.answer(503, f"{reason}; try again later"))
        with contextlib.suppress(*_GONE):
            await client.aclose()

    async def _connection(self, client: SocketStream) -> None:
        seen = _Seen()
        try:
            async with client:
                try:
                    await self._exchange(client, seen)
                except _Answer as answer:
                    self._decided(seen, answer.allowed, answer.status, answer.reason)
                    await self._answer(client, answer)
        except _GONE:
            pass  # the client or the host went away: this connection is over
        except Exception as exc:  # a bug must cost one connection, never the proxy
            self._error(f"internal error in the egress proxy ({type(exc).__name__}: {exc}); one connection closed")
        finally:
            self._active -= 1

    async def _exchange(self, client: SocketStream, seen: _Seen) -> None:
        from anyio.streams.buffered import BufferedByteReceiveStream

        from mcpshield.sandbox import httphead

        reader = BufferedByteReceiveStream(client)
        head = await self._read_head(reader)
        if head is None:
            return
        try:
            request = httphead.parse_request(head)
        except httphead.HeadError as exc:
            raise _Answer(400, str(exc)) from None
        seen.method = request.method
        if request.method == "CONNECT":
            await self._tunnel(request, reader, client, seen)
        elif request.target.lower().startswith("http://"):
            await self._forward(request, reader, client, seen)
        elif "://" in request.target:
            raise _Answer(400, "only http:// URLs are forwarded; https and others go through CONNECT")
        else:
            raise _Answer(405, "this is a proxy: it forwards CONNECT host:port and absolute-form http:// requests")

    async def _read_head(self, reader: BufferedByteReceiveStream) -> bytes | None:
        """The request head without its blank line; None when the client closed without asking."""
        limit = self._limits.max_head_bytes
        try:
            with anyio.fail_after(self._limits.head_timeout_s):
                head = await reader.receive_until(b"\r\n\r\n", limit)
        except TimeoutError:
            raise _Answer(408, f"the request head did not arrive within {self._limits.head_timeout_s:g} s") from None
        except anyio.DelimiterNotFound:
            raise _Answer(431, f"the request head is longer than {limit} bytes") from None
        except anyio.IncompleteRead:
            if reader.buffer:
                raise _Answer(400, "the connection ended inside the request head (lines end in CRLF)") from None
            return None
        if len(head) > limit:  # the blank line may come in the last chunk read, past the limit
            raise _Answer(431, f"the request head is longer than {limit} bytes")
        return head

    async def _tunnel(self, request: Request, reader: ByteReceiveStream, client: SocketStream, seen: _Seen) -> None:
        from mcpshield.sandbox import httphead

        try:
            written, seen.port = httphead.connect_authority(request.target)
        except httphead.HeadError as exc:
            raise _Answer(400, str(exc)) from None
        seen.host = httphead.shown(written)
        host = self._decide(canonical_host(written), seen)
        upstream = await self._connect(host, seen.port)
        async with upstream:
            self._decided(seen, True, 200, "tunnel opened")
            await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await self._both_ways(
                functools.partial(_copy, reader, upstream), functools.partial(_copy, upstream, client)
            )

    async def _forward(self, request: Request, reader: ByteReceiveStream, client: SocketStream, seen: _Seen) -> None:
        from urllib.parse import urlsplit

        from anyio.streams.buffered import BufferedByteReceiveStream

        from mcpshield.sandbox import httphead

        try:
            parts = urlsplit(request.target)
            port = parts.port
        except ValueError:
            raise _Answer(400, "the URL is malformed") from None
        if not parts.hostname or port == 0:
            raise _Answer(400, "the URL names no host or port 0")
        seen.host, seen.port = httphead.shown(parts.hostname), port or 80
        host = self._decide(url_host(request.target), seen)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = httphead.upstream_head(request, parts.netloc, path)
        upstream = await self._connect(host, seen.port)
        async with upstream:
            self._decided(seen, True, None, "request forwarded")
            await upstream.send(head)
            response = BufferedByteReceiveStream(upstream)
            await self._both_ways(
                functools.partial(_copy, reader, upstream), functools.partial(_respond, response, client)
            )

    def _decide(self, host: str | None, seen: _Seen) -> str:
        """The canonical host to connect to; raises _Answer(403) when the policy refuses it."""
        if host is None:
            raise _Answer(403, f"{seen.host or 'the host'} could be read as more than one host")
        seen.host = host
        why = self._stopped() if self._stopped is not None else None
        if why is not None:
            raise _Answer(503, f"mcpshield refuses egress: the audit log cannot be written ({why})")
        if self._deny.matches_some_reading(host):
            raise _Answer(403, f"{host} is listed in [sandbox] network_deny")
        if not self._allow.matches_every_reading(host):
            raise _Answer(403, f"{host} is not in [sandbox] network")
        return host

    async def _connect(self, host: str, port: int) -> SocketStream:
        """A connection to an address of `host` that the deny list does not catch."""
        timeout = self._limits.connect_timeout_s
        try:
            with anyio.fail_after(timeout):
                found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                addresses = self._undenied(host, [str(info[4][0]) for info in found])
                return await _first_to_answer(addresses, port)
        except TimeoutError:
            raise _Answer(504, f"{host}:{port} did not answer within {timeout:g} s", allowed=True) from None
        except OSError as exc:
            raise _Answer(502, f"cannot reach {host}:{port} ({_why(exc)})", allowed=True) from None

    def _undenied(self, host: str, addresses: list[str]) -> list[str]:
        """The addresses `host` resolved to, in order, without those the deny list catches: a
        name resolving to a denied address (`169.254.169.254.nip.io`) cannot reach it."""
        import ipaddress

        kept: list[str] = []
        denied: list[str] = []
        for address in dict.fromkeys(addresses):
            canonical = ipaddress.ip_address(address.partition("%")[0]).compressed
            refused = self._deny.matches_some_reading(canonical) or self._reaches_this_machine(host, canonical)
            (denied if refused else kept).append(address)
        if denied and not kept:
            raise _Answer(
                403,
                f"{host} resolves to {denied[0]}, which [sandbox] network_deny lists or which is this machine "
                "(only `localhost` or a loopback address listed in [sandbox] network reaches it)",
            )
        return kept

    def _reaches_this_machine(self, host: str, address: str) -> bool:
        """Whether `address` is this machine (loopback, or 0.0.0.0 and `::`, which connect there)
        while the profile did not allow it as such: a name of an allowed domain must not lead
        to the services on the machine outside the sandbox."""
        import ipaddress

        readings = [ipaddress.ip_address(reading) for reading in host_readings(address)]
        if any(ip.is_unspecified or ip in _THIS_NETWORK for ip in readings):
            return True
        loopback = any(ip.is_loopback for ip in readings)
        return loopback and host != "localhost" and not self._allow.matches_every_reading(address)

    async def _both_ways(self, up: Callable[[], Awaitable[None]], down: Callable[[], Awaitable[None]]) -> None:
        """Runs both directions of a connection; once one has finished (or failed), the other
        gets `half_closed_linger_s` to finish."""
        linger = self._limits.half_closed_linger_s
        async with anyio.create_task_group() as tg:
            finished = 0

            async def run(direction: Callable[[], Awaitable[None]]) -> None:
                nonlocal finished
                with contextlib.suppress(*_GONE):
                    await direction()
                finished += 1
                if finished == 1:  # after the second, the group ends by itself
                    tg.cancel_scope.deadline = anyio.current_time() + linger

            tg.start_soon(run, up)
            tg.start_soon(run, down)

    async def _answer(self, client: SocketStream, answer: _Answer) -> None:
        """Sends the answer, then reads what the client still sends until it closes (bounded), so
        that closing with unread data does not reset the connection and lose the answer."""
        from mcpshield.sandbox import httphead

        with anyio.move_on_after(self._limits.answer_timeout_s), contextlib.suppress(anyio.EndOfStream):
            await client.send(httphead.answer(answer.status, answer.reason))
            await client.send_eof()
            drained = 0
            while drained < MAX_DRAIN_BYTES:
                drained += len(await client.receive())

    def _decided(self, seen: _Seen, allowed: bool, status: int | None, reason: str) -> None:
        if self._on_decision is None:
            return
        try:
            self._on_decision(ProxyDecision(allowed, seen.method, seen.host, seen.port, status, reason))
        except Exception as exc:  # the callback's failure must not decide the connection
            self._error(f"recording an egress decision failed ({type(exc).__name__}: {exc})")

    def _error(self, text: str) -> None:
        if self._on_error is not None:
            with contextlib.suppress(Exception):  # nowhere left to report to
                self._on_error(text)


# -- relaying ------------------------------------------------------------------------------


async def _respond(response: BufferedByteReceiveStream, client: ByteStream) -> None:
    """Relays the host's answer: its heads rewritten (interim 1xx ones passed on before the final
    one), then the rest as it comes. A host that answers no HTTP gets the client a 502."""
    from mcpshield.sandbox import httphead

    budget = MAX_RESPONSE_HEAD_BYTES
    while True:
        try:
            head: bytes | None = await response.receive_until(b"\r\n\r\n", budget)
        except (anyio.DelimiterNotFound, anyio.IncompleteRead):
            head = None  # no head within the budget, or the host closed first
        budget -= len(head or b"") + 4
        parsed = None if head is None or budget < 0 else httphead.response_head(head)
        if parsed is None:
            await client.send(httphead.answer(502, "the host did not answer with an HTTP/1.x response head"))
            await client.send_eof()
            return
        status, rewritten = parsed
        await client.send(rewritten)
        if httphead.is_final(status):
            break
    await _copy(response, client)


async def _copy(source: ByteReceiveStream, sink: ByteStream) -> None:
    async for chunk in source:
        await sink.send(chunk)
    await sink.send_eof()


async def _first_to_answer(addresses: list[str], port: int) -> SocketStream:
    """Tries the addresses in turn, each with an equal share of the time left, so that one that
    never answers cannot use up the time of those after it."""
    failure = OSError("the host has no address")
    for index, address in enumerate(addresses):
        share = (anyio.current_effective_deadline() - anyio.current_time()) / (len(addresses) - index)
        with anyio.move_on_after(share):
            try:
                return await anyio.connect_tcp(address, port)
            except OSError as exc:
                failure = exc
                continue
        failure = TimeoutError(f"{address} did not answer")
    raise failure  # a TimeoutError (an OSError too) when the last one did not answer in time


def _raw_socket(listener: SocketListener) -> socket.socket:
    from anyio.abc import SocketAttribute

    return listener.extra(SocketAttribute.raw_socket)  # noqa: S610 -- anyio, not Django


async def _stream(conn: socket.socket) -> SocketStream:
    from anyio.abc import SocketStream

    return await SocketStream.from_socket(conn)


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    return (cause.strerror if isinstance(cause, OSError) else None) or str(cause) or type(cause).__name__


# -- listening ---------------------------------------------------------------------------


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at `path` (mode 0600) for the proxy. `path.parent` must be a
    directory private to this user (checked); `path` must not exist. Raises SandboxError."""
    _check_private(path.parent)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        os.chmod(path, SOCKET_MODE)  # the folder is private, so the moment before this is harmless
        sock.listen(MAX_CONNECTIONS)
    except OSError as exc:
        sock.close()
        raise SandboxError(
            f"cannot start the egress proxy at {path}: {_why(exc)}",
            "give it a short path in a fresh private folder (Unix socket paths are limited to ~100 bytes)",
        ) from None
    return sock


def bind_tcp() -> socket.socket:
    """A listening TCP socket on 127.0.0.1 at a port the kernel picks (`getsockname()[1]`).
    Every local process can reach it: prefer `bind_unix` where the sandbox can relay to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(MAX_CONNECTIONS)
    except OSError as exc:
        sock.close()
        raise SandboxError(
            f"cannot start the egress proxy on 127.0.0.1: {_why(exc)}", "check that the loopback interface is up"
        ) from None
    return sock


def _check_private(directory: Path) -> None:
    try:
        info = directory.lstat()
    except OSError as exc:
        raise _not_private(directory, _why(exc)) from None
    if not stat.S_ISDIR(info.st_mode):
        raise _not_private(directory, "it is not a directory (or it is a symbolic link)")
    if info.st_uid != os.geteuid():
        raise _not_private(directory, f"it belongs to uid {info.st_uid}")
    if info.st_mode & 0o077:
        raise _not_private(directory, "other users can open it")


def _not_private(directory: Path, why: str) -> SandboxError:
    return SandboxError(
        f"cannot put the egress proxy's socket in {directory}: {why}",
        "this is a bug in mcpshield: it makes that folder itself, private (0700)",
    )
