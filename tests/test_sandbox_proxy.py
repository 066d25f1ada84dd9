"""The egress proxy over real sockets: CONNECT tunnels and plain HTTP to a local echo server and
http.server, the policy on host names (deny first, addresses only through ranges), the answers
to what it refuses, and its bounds; and HostSet, the matching it shares with `hosts` conditions."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import struct
import tempfile
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Final

import anyio
import pytest
from anyio.abc import SocketListener, SocketStream
from hypothesis import given
from hypothesis import strategies as st

from mcpshield.errors import SandboxError
from mcpshield.policy.hosts import HostSet
from mcpshield.sandbox import httphead
from mcpshield.sandbox.proxy import (
    EgressProxy,
    ProxyDecision,
    ProxyLimits,
    bind_tcp,
    bind_unix,
)

pytestmark = pytest.mark.anyio

#: Bound on any one exchange with the proxy in these tests.
EXCHANGE_TIMEOUT_S: Final = 10.0
#: Bound on a server thread stopping.
STOP_TIMEOUT_S: Final = 10.0
#: The proxy's timeouts where a test waits for one to expire.
SHORT_S: Final = 0.3


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """The relay's loop is uvloop where installed, plain asyncio elsewhere: the proxy runs on both."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
        return ("asyncio", {"use_uvloop": True})
    return ("asyncio", {})


# -- servers the proxy reaches ----------------------------------------------------------------


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A TCP echo server on 127.0.0.1 that half-closes when its client does; yields its port."""

    async def echo(stream: SocketStream) -> None:
        async with stream:
            try:
                async for chunk in stream:
                    await stream.send(chunk)
                await stream.send_eof()
            except anyio.BrokenResourceError:
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 -- anyio, not Django
        tg.cancel_scope.cancel()


class _EchoHeaders(BaseHTTPRequestHandler):
    """Answers every GET with the path and the fields it received, as JSON, and hop-by-hop
    fields of its own that the proxy must not pass on."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "fields": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Keep-Alive", "timeout=5")
        self.send_header("Connection", "X-Hop")
        self.send_header("X-Hop", "secret")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        """Answers with the size and a digest of the body it read (Content-Length or chunked)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            received = b""
            while size := int(self.rfile.readline().strip(), 16):
                received += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            received = self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"size": len(received), "sha256": hashlib.sha256(received).hexdigest()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    """http.server on 127.0.0.1 in a thread; yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHeaders)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT_S)


def closed_port() -> int:
    """A port nothing listens on (just released by the kernel)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the proxy ----------------------------------------------------------------------------


@dataclass
class Running:
    """A proxy serving on a socket; `connect` opens a client connection to it."""

    connect: Callable[[], AbstractAsyncContextManager[SocketStream]]
    decisions: list[ProxyDecision] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    port: int = 0


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A short private folder (AF_UNIX paths are limited to ~104 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mcps-") as tmp:
        yield Path(tmp)


@asynccontextmanager
async def running(
    allow: tuple[str, ...],
    deny: tuple[str, ...] = (),
    *,
    via: str = "unix",
    folder: Path | None = None,
    limits: ProxyLimits = ProxyLimits(),  # noqa: B008 -- frozen
    on_decision: Callable[[ProxyDecision], None] | None = None,
    stopped: Callable[[], str | None] | None = None,
) -> AsyncIterator[Running]:
    decisions: list[ProxyDecision] = []
    errors: list[str] = []
    if via == "unix":
        assert folder is not None
        path = folder / "proxy.sock"
        sock = bind_unix(path)

        @asynccontextmanager
        async def connect() -> AsyncIterator[SocketStream]:
            with anyio.fail_after(EXCHANGE_TIMEOUT_S):
                stream = await anyio.connect_unix(path)
            async with stream:
                yield stream

        port = 0
    else:
        sock = bind_tcp()
        port = sock.getsockname()[1]

        @asynccontextmanager
        async def connect() -> AsyncIterator[SocketStream]:
            with anyio.fail_after(EXCHANGE_TIMEOUT_S):
                stream = await anyio.connect_tcp("127.0.0.1", port)
            async with stream:
                yield stream

    proxy = EgressProxy(
        allow, deny, on_decision or decisions.append, on_error=errors.append, limits=limits, stopped=stopped
    )
    # serve takes an anyio listener or the bound socket itself: the Unix one goes as a listener
    listener = await SocketListener.from_socket(sock) if via == "unix" else None
    async with anyio.create_task_group() as tg:
        tg.start_soon(proxy.serve, listener or sock)
        yield Running(connect, decisions, errors, port)
        tg.cancel_scope.cancel()
    if listener is not None:
        await listener.aclose()
    sock.close()
    assert errors == []


async def read_until_eof(stream: SocketStream) -> bytes:
    out = b""
    with anyio.fail_after(EXCHANGE_TIMEOUT_S):
        try:
            async for chunk in stream:
                out += chunk
        except anyio.BrokenResourceError:
            pass  # a reset after the answer: what was read counts
    return out


async def read_head(stream: SocketStream) -> bytes:
    out = b""
    with anyio.fail_after(EXCHANGE_TIMEOUT_S):
        while b"\r\n\r\n" not in out:
            out += await stream.receive()
    return out


async def ask(proxy: Running, request: bytes) -> bytes:
    """Sends `request` on a fresh connection and closes its sending side; everything the proxy
    answered, to its close."""
    async with proxy.connect() as stream:
        with anyio.fail_after(EXCHANGE_TIMEOUT_S):
            await stream.send(request)
            await stream.send_eof()  # a tunnel then ends once the host has answered
        return await read_until_eof(stream)


def connect_to(host: str, port: int) -> bytes:
    return f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# -- CONNECT ------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["unix", "tcp"])
async def test_a_connect_tunnel_to_an_allowed_name_reaches_the_host(via: str, private_dir: Path) -> None:
    async with (
        echo_server() as port,
        running(("localhost",), via=via, folder=private_dir) as proxy,
        proxy.connect() as stream,
    ):
        # bytes sent before the 200 (a TLS hello, pipelined) reach the host too
        await stream.send(connect_to("localhost", port) + b"early ")
        head = await read_head(stream)
        assert head.startswith(b"HTTP/1.1 200 ")
        await stream.send(b"ping")
        await stream.send_eof()
        assert head.partition(b"\r\n\r\n")[2] + await read_until_eof(stream) == b"early ping"
    assert proxy.decisions == [ProxyDecision(True, "CONNECT", "localhost", port, 200, "tunnel opened")]


async def test_a_connect_to_a_name_not_listed_is_refused_with_403_naming_the_profile_key(private_dir: Path) -> None:
    async with running(("localhost",), folder=private_dir) as proxy:
        answer = await ask(proxy, connect_to("example.com", 443))
    assert status_of(answer) == 403
    assert b"mcpshield" in answer
    assert b"[sandbox] network" in answer
    (decision,) = proxy.decisions
    assert (decision.allowed, decision.method, decision.host, decision.port, decision.status) == (
        False,
        "CONNECT",
        "example.com",
        443,
        403,
    )


async def test_the_deny_list_wins_over_the_allow_list(private_dir: Path) -> None:
    async with echo_server() as port, running(("*", "localhost"), ("localhost",), folder=private_dir) as proxy:
        answer = await ask(proxy, connect_to("LocalHost.", port))
    assert status_of(answer) == 403
    assert "network_deny" in proxy.decisions[0].reason
    assert proxy.decisions[0].host == "localhost"


async def test_a_name_that_resolves_to_a_denied_address_is_refused(private_dir: Path) -> None:
    async with echo_server() as port, running(("localhost",), ("127.0.0.0/8", "::1"), folder=private_dir) as proxy:
        answer = await ask(proxy, connect_to("localhost", port))
    assert status_of(answer) == 403
    assert "resolves to" in proxy.decisions[0].reason


async def test_the_unspecified_address_which_reaches_this_machine_is_refused_even_under_star(private_dir: Path) -> None:
    async with echo_server() as port, running(("*",), folder=private_dir) as proxy:
        answer = await ask(proxy, connect_to("0.0.0.0", port))  # noqa: S104 - the address under test
    assert status_of(answer) == 403
    assert "this machine" in proxy.decisions[0].reason


def test_a_name_that_resolves_to_loopback_is_refused_unless_it_is_localhost_or_a_listed_address() -> None:
    proxy = EgressProxy(("*.example.com", "localhost"), ())
    with pytest.raises(Exception, match="this machine"):
        proxy._undenied("rebound.example.com", ["127.0.0.1"])
    assert proxy._undenied("rebound.example.com", ["127.0.0.1", "93.184.215.14"]) == ["93.184.215.14"]
    assert proxy._undenied("localhost", ["127.0.0.1", "::1"]) == ["127.0.0.1", "::1"]
    assert EgressProxy(("*.example.com", "127.0.0.0/8"), ())._undenied("a.example.com", ["127.0.0.1"]) == ["127.0.0.1"]


async def test_while_the_audit_log_cannot_be_written_every_request_is_refused(private_dir: Path) -> None:
    why: list[str] = []
    async with (
        echo_server() as port,
        running(("localhost",), folder=private_dir, stopped=lambda: next(iter(why), None)) as proxy,
    ):
        assert status_of(await ask(proxy, connect_to("localhost", port))) == 200
        why.append("disk full")
        answer = await ask(proxy, connect_to("localhost", port))
    assert status_of(answer) == 503 and b"audit log" in answer
    assert (proxy.decisions[-1].allowed, proxy.decisions[-1].status) == (False, 503)


async def test_clients_that_reset_before_they_are_served_never_stop_the_proxy() -> None:
    async with echo_server() as port, running(("localhost",), via="tcp") as proxy:
        for _ in range(100):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=EXCHANGE_TIMEOUT_S) as rude:
                rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        answer = await ask(proxy, connect_to("localhost", port) + b"ping")
    assert status_of(answer) == 200 and answer.endswith(b"ping")


async def test_an_ip_literal_is_refused_unless_a_range_allows_it(private_dir: Path) -> None:
    async with echo_server() as port:
        async with running(("localhost", "*.example.com"), folder=private_dir) as proxy:
            assert status_of(await ask(proxy, connect_to("127.0.0.1", port))) == 403
        os.unlink(private_dir / "proxy.sock")
        async with running(("127.0.0.0/8",), folder=private_dir) as proxy:
            assert status_of(await ask(proxy, connect_to("127.0.0.1", port))) == 200


@pytest.mark.parametrize(
    ("allow", "deny"),
    [(("127.0.0.0/8",), ()), (("*",), ("127.0.0.1",))],
    ids=["an-allow-range-must-hold-both-readings", "a-deny-entry-catches-either-reading"],
)
async def test_an_ipv6_spelling_of_an_ipv4_address_is_read_both_ways(
    allow: tuple[str, ...], deny: tuple[str, ...], private_dir: Path
) -> None:
    async with running(allow, deny, folder=private_dir) as proxy:
        assert status_of(await ask(proxy, connect_to("[::ffff:127.0.0.1]", 80))) == 403


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.0.0.1", "a b", "user@localhost", "[localhost]"])
async def test_a_host_that_parsers_could_read_differently_is_refused(host: str, private_dir: Path) -> None:
    async with running(("*",), folder=private_dir) as proxy:
        answer = await ask(proxy, f"CONNECT {host}:80 HTTP/1.1\r\n\r\n".encode())
    assert status_of(answer) in (400, 403)
    assert not proxy.decisions[0].allowed


async def test_a_tunnel_whose_client_half_closes_still_gets_the_rest_of_the_answer(private_dir: Path) -> None:
    async with echo_server() as port, running(("localhost",), folder=private_dir) as proxy, proxy.connect() as stream:
        await stream.send(connect_to("localhost", port))
        await read_head(stream)
        await stream.send(b"x" * 300_000)
        await stream.send_eof()
        assert await read_until_eof(stream) == b"x" * 300_000


# -- plain HTTP ---------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["unix", "tcp"])
async def test_a_plain_http_request_gets_the_page_without_hop_by_hop_fields(
    via: str, http_port: int, private_dir: Path
) -> None:
    request = (
        f"GET http://localhost:{http_port}/page?token=secret HTTP/1.1\r\n"
        "Host: elsewhere.example\r\n"
        "Proxy-Authorization: Basic c2VjcmV0\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Connection: keep-alive, X-Private\r\n"
        "X-Private: 1\r\n"
        "X-Kept: 2\r\n\r\n"
    ).encode()
    async with running(("localhost",), via=via, folder=private_dir) as proxy:
        answer = await ask(proxy, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert lines[0].startswith(b"http/1.1 200")
    assert b"connection: close" in lines
    assert not [line for line in lines if line.startswith((b"keep-alive", b"x-hop", b"connection: x-hop"))]
    seen = json.loads(body)
    assert seen["path"] == "/page?token=secret"
    fields = dict(seen["fields"])
    assert fields["host"] == f"localhost:{http_port}"
    assert fields["connection"] == "close"
    assert fields["x-kept"] == "2"
    assert not {"proxy-authorization", "proxy-connection", "x-private"} & set(fields)
    (decision,) = proxy.decisions
    assert (decision.allowed, decision.method, decision.host, decision.status) == (True, "GET", "localhost", None)
    assert "secret" not in repr(decision)
    assert decision.as_event() == {
        "decision": "allow",
        "method": "GET",
        "host": "localhost",
        "port": http_port,
        "status": None,
        "reason": "request forwarded",
    }


async def test_urllib_through_the_proxy_gets_the_page(
    http_port: int, private_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    async with running(("localhost",), via="tcp", folder=private_dir) as proxy:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy.port}"}))

        def fetch() -> bytes:
            with opener.open(f"http://localhost:{http_port}/via-urllib", timeout=EXCHANGE_TIMEOUT_S) as response:
                return bytes(response.read())

        with anyio.fail_after(EXCHANGE_TIMEOUT_S):
            body = await anyio.to_thread.run_sync(fetch)
    assert json.loads(body)["path"] == "/via-urllib"


@pytest.mark.parametrize("tunnel", [False, True], ids=["plain", "connect"])
async def test_curl_through_the_proxy_reaches_an_allowed_host(tunnel: bool, http_port: int, private_dir: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    async with running(("localhost",), via="tcp", folder=private_dir) as proxy:
        argv = [curl, "-sS", "--noproxy", "", "--proxy", f"http://127.0.0.1:{proxy.port}"]
        argv += ["--proxytunnel"] if tunnel else []
        with anyio.fail_after(EXCHANGE_TIMEOUT_S):
            done = await anyio.run_process([*argv, f"http://localhost:{http_port}/via-curl"], check=True)
        with anyio.fail_after(EXCHANGE_TIMEOUT_S):
            code = "%{http_connect}" if tunnel else "%{http_code}"
            refused = await anyio.run_process([*argv, "-o", os.devnull, "-w", code, "http://example.com/"], check=False)
    assert json.loads(done.stdout)["path"] == "/via-curl"
    assert proxy.decisions[0].method == ("CONNECT" if tunnel else "GET")
    assert proxy.decisions[-1].host == "example.com" and not proxy.decisions[-1].allowed
    assert refused.stdout == b"403"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_curl_posts_a_large_body_past_an_interim_100_continue(
    chunked: bool, http_port: int, private_dir: Path
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = os.urandom(3 * 1024 * 1024)  # past 1 MiB curl asks `Expect: 100-continue` first
    (private_dir / "body").write_bytes(body)
    async with running(("localhost",), via="tcp", folder=private_dir) as proxy:
        argv = [curl, "-sS", "--noproxy", "", "--proxy", f"http://127.0.0.1:{proxy.port}"]
        argv += ["-H", "Transfer-Encoding: chunked"] if chunked else []
        argv += ["--data-binary", f"@{private_dir / 'body'}", f"http://localhost:{http_port}/upload"]
        with anyio.fail_after(EXCHANGE_TIMEOUT_S):
            done = await anyio.run_process(argv, check=True)
    assert json.loads(done.stdout) == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def test_an_https_url_in_absolute_form_is_answered_400(private_dir: Path) -> None:
    async with running(("*",), folder=private_dir) as proxy:
        answer = await ask(proxy, b"GET https://localhost/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status_of(answer) == 400


# -- refusals and bounds ------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_head",
    [
        b"GARBAGE\r\n\r\n",
        b"GET http://localhost/ HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET http://localhost/ HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET http://localhost/ HTTP/1.1\r\nX-A : 1\r\n\r\n",
        b"GET http://localhost/ HTTP/1.1\r\nX-A: 1\nX-B: 2\r\n\r\n",
        b"POST http://localhost/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST http://localhost/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 5\r\n\r\n",
        b"GET http://localhost/ HTTP/2.0\r\n\r\n",
        b"CONNECT localhost HTTP/1.1\r\n\r\n",
        b"CONNECT ::1:443 HTTP/1.1\r\n\r\n",
        b"CONNECT localhost:99999 HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET http://localhost/ HTTP/1.1\n\n",
    ],
)
async def test_a_malformed_request_is_answered_400(request_head: bytes, private_dir: Path) -> None:
    async with running(("*",), folder=private_dir) as proxy, proxy.connect() as stream:
        await stream.send(request_head)
        if not request_head.endswith(b"\r\n\r\n"):
            await stream.send_eof()
        answer = await read_until_eof(stream)
    assert status_of(answer) == 400
    assert proxy.decisions[0].status == 400


async def test_an_origin_form_request_is_answered_405(private_dir: Path) -> None:
    async with running(("*",), folder=private_dir) as proxy:
        answer = await ask(proxy, b"GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status_of(answer) == 405


async def test_a_head_over_the_bound_is_answered_431(private_dir: Path) -> None:
    async with running(("*",), folder=private_dir) as proxy:
        answer = await ask(proxy, b"GET http://localhost/ HTTP/1.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    assert status_of(answer) == 431


async def test_an_unreachable_host_is_answered_502(private_dir: Path) -> None:
    port = closed_port()
    async with running(("localhost",), folder=private_dir) as proxy:
        answer = await ask(proxy, connect_to("localhost", port))
    assert status_of(answer) == 502
    assert proxy.decisions == [
        ProxyDecision(True, "CONNECT", "localhost", port, 502, proxy.decisions[0].reason),
    ]


async def test_a_host_that_does_not_answer_in_time_is_answered_504(private_dir: Path) -> None:
    # A listener whose backlog is full: the kernel ignores further SYNs and connect() waits.
    with socket.socket() as silent, socket.socket() as filler:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        port = silent.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        limits = ProxyLimits(connect_timeout_s=SHORT_S)
        async with running(("127.0.0.0/8",), folder=private_dir, limits=limits) as proxy:
            answer = await ask(proxy, connect_to("127.0.0.1", port))
    if status_of(answer) == 502:
        pytest.skip("this kernel refuses connections past a full backlog instead of ignoring them")
    assert status_of(answer) == 504


async def test_connections_past_the_limit_are_answered_503(private_dir: Path) -> None:
    limits = ProxyLimits(max_connections=1)
    async with (
        echo_server() as port,
        running(("localhost",), folder=private_dir, limits=limits) as proxy,
        proxy.connect() as first,
    ):
        await first.send(connect_to("localhost", port))
        assert (await read_head(first)).startswith(b"HTTP/1.1 200")
        async with proxy.connect() as second:
            assert status_of(await read_until_eof(second)) == 503
        await first.send(b"still served")
        with anyio.fail_after(EXCHANGE_TIMEOUT_S):
            assert await first.receive() == b"still served"
    assert [decision.status for decision in proxy.decisions] == [200, 503]


async def test_a_client_that_stalls_inside_its_head_is_answered_408_and_dropped(private_dir: Path) -> None:
    limits = ProxyLimits(head_timeout_s=SHORT_S)
    async with echo_server() as port, running(("localhost",), folder=private_dir, limits=limits) as proxy:
        async with proxy.connect() as stalled:
            await stalled.send(b"CONNECT localhost:80 HT")
            # meanwhile another connection is served as usual
            assert status_of(await ask(proxy, connect_to("localhost", closed_port()))) == 502
            assert status_of(await read_until_eof(stalled)) == 408
        assert status_of(await ask(proxy, connect_to("localhost", port))) == 200


async def test_a_failing_decision_callback_never_breaks_the_proxy(private_dir: Path) -> None:
    def explode(decision: ProxyDecision) -> None:
        raise RuntimeError("the log is gone")

    async with (
        echo_server() as port,
        running(("localhost",), folder=private_dir, on_decision=explode) as proxy,
    ):
        async with proxy.connect() as stream:
            await stream.send(connect_to("localhost", port))
            assert (await read_head(stream)).startswith(b"HTTP/1.1 200")
        assert len(proxy.errors) == 1
        proxy.errors.clear()


async def test_an_empty_connection_is_closed_without_a_decision(private_dir: Path) -> None:
    async with running(("*",), folder=private_dir) as proxy, proxy.connect() as stream:
        await stream.send_eof()
        assert await read_until_eof(stream) == b""
    assert proxy.decisions == []


@given(st.binary(max_size=300))
def test_reading_any_request_head_returns_a_request_or_raises_head_error(head: bytes) -> None:
    try:
        request = httphead.parse_request(head)
    except httphead.HeadError:
        return
    assert " " not in request.target
    upstream = httphead.upstream_head(request, "example.com", "/")
    assert upstream.endswith(b"\r\nConnection: close\r\n\r\n")


@given(
    st.lists(
        st.sampled_from(
            [
                b"X-A: 1",
                b"Connection: x-a",
                b"Connection: content-length",
                b"Keep-Alive: 5",
                b"Content-Length: 3",
                b"Proxy-Authorization: x",
                b"TE: trailers",
                b"\x00",
                b" x",
            ]
        )
    )
)
def test_a_relayed_head_never_carries_hop_by_hop_fields_and_keeps_its_framing(lines: list[bytes]) -> None:
    head = b"\r\n".join([b"GET http://example.com/ HTTP/1.1", *lines])
    try:
        request = httphead.parse_request(head)
    except httphead.HeadError:
        assert b"\x00" in lines or b" x" in lines or lines.count(b"Content-Length: 3") > 1
        return
    sent = httphead.upstream_head(request, "example.com", "/").lower().split(b"\r\n")
    assert not [line for line in sent if line.startswith((b"keep-alive", b"proxy-authorization", b"te:"))]
    assert sent.count(b"connection: close") == 1 and len([x for x in sent if x.startswith(b"connection")]) == 1
    assert (b"content-length: 3" in sent) == (b"Content-Length: 3" in lines)
    assert (b"x-a: 1" in sent) == (b"X-A: 1" in lines and b"Connection: x-a" not in lines)


@given(st.binary(max_size=300))
def test_reading_any_response_head_returns_a_head_to_relay_or_none(head: bytes) -> None:
    parsed = httphead.response_head(head)
    if parsed is not None:
        assert parsed[1].endswith(b"\r\n\r\n")


# -- listening ----------------------------------------------------------------------------


def test_the_unix_socket_is_private_to_its_owner(private_dir: Path) -> None:
    with bind_unix(private_dir / "proxy.sock"):
        assert stat.S_IMODE(os.stat(private_dir / "proxy.sock").st_mode) == 0o600


def test_the_unix_socket_is_refused_in_a_folder_others_can_open(private_dir: Path) -> None:
    shared = private_dir / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(SandboxError, match="other users can open it"):
        bind_unix(shared / "proxy.sock")


def test_the_unix_socket_is_refused_over_an_existing_file(private_dir: Path) -> None:
    (private_dir / "proxy.sock").touch()
    with pytest.raises(SandboxError, match="cannot start the egress proxy"):
        bind_unix(private_dir / "proxy.sock")


def test_the_tcp_socket_listens_on_loopback_at_a_kernel_chosen_port() -> None:
    with bind_tcp() as sock:
        host, port = sock.getsockname()
    assert host == "127.0.0.1"
    assert port > 0


# -- HostSet --------------------------------------------------------------------------------


def test_a_host_set_matches_exact_names_and_not_their_subdomains() -> None:
    hosts = HostSet(["example.com"])
    assert hosts.matches("example.com")
    assert not hosts.matches("www.example.com")
    assert not hosts.matches("badexample.com")


def test_a_star_dot_entry_matches_subdomains_but_not_the_domain_itself() -> None:
    hosts = HostSet(["*.example.com"])
    assert hosts.matches("a.example.com")
    assert hosts.matches("a.b.example.com")
    assert not hosts.matches("example.com")
    assert not hosts.matches("evilexample.com")


def test_a_cidr_entry_matches_addresses_inside_it_of_its_own_version() -> None:
    hosts = HostSet(["10.0.0.0/8", "fd00::/8"])
    assert hosts.matches("10.1.2.3")
    assert not hosts.matches("11.0.0.1")
    assert hosts.matches("fd12::1")
    assert not hosts.matches("::ffff:a00:1")  # the IPv6 form alone; the readings below cover both


def test_a_name_never_matches_an_address_entry_nor_an_address_a_name_entry() -> None:
    assert not HostSet(["10.0.0.0/8"]).matches("host10")
    assert not HostSet(["*.example.com"]).matches("93.184.215.14")


def test_a_star_matches_everything() -> None:
    hosts = HostSet(["*"])
    assert hosts.matches("anything.example") and hosts.matches("127.0.0.1") and hosts.matches("::1")


def test_an_ipv6_host_carrying_an_ipv4_address_must_match_every_reading_to_be_allowed() -> None:
    only_v4 = HostSet(["127.0.0.0/8"])
    assert not only_v4.matches_every_reading("::ffff:7f00:1")
    assert only_v4.matches_some_reading("::ffff:7f00:1")
    assert HostSet(["127.0.0.0/8", "::ffff:0:0/96"]).matches_every_reading("::ffff:7f00:1")


def test_a_host_set_refuses_an_entry_a_profile_could_not_hold() -> None:
    with pytest.raises(ValueError, match="not a host name"):
        HostSet(["exa mple.com"])
    with pytest.raises(ValueError, match="CIDR"):
        HostSet(["10.0.0.1/8"])
