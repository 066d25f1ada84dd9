"""What both ends of the approver's socket share: writing queued lines until the peer goes."""

from __future__ import annotations

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream


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
