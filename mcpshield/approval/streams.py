"""What both ends of the approver's socket share: reading bounded lines, and writing queued
lines, until the peer goes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream

from mcpshield.approval.protocol import MAX_LINE_BYTES


async def write_lines(
    stream: anyio.abc.SocketStream, lines: MemoryObjectReceiveStream[bytes], scope: anyio.CancelScope
) -> None:
    """Sends each queued line; when the peer is gone, cancels `scope` (its reader) too."""
    async with lines:
        try:
            async for line in lines:
                await stream.send(line)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            scope.cancel()


class LineTooLong(Exception):
    """The peer sent a line over MAX_LINE_BYTES: the connection is to be closed."""


async def read_lines(stream: anyio.abc.SocketStream) -> AsyncIterator[bytes]:
    """Each line the peer sends, until it goes; LineTooLong for a line over the bound."""
    buffered = BufferedByteReceiveStream(stream)
    while True:
        try:
            yield await buffered.receive_until(b"\n", MAX_LINE_BYTES)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
            return
        except anyio.DelimiterNotFound:
            raise LineTooLong from None
