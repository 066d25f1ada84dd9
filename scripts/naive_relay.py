"""The benchmark's baseline: the obvious asyncio line relay, `python scripts/naive_relay.py -- CMD ARGS`.

Each message is read with readline, parsed with json.loads, re-encoded with json.dumps and written
with a drain, in both directions. It is deliberately plain: it shows what a wrapper costs when
nobody optimised it.
"""

from __future__ import annotations

import asyncio
import json
import sys

# The default StreamReader limit (64 KiB) would reject the benchmark's 10 MB message.
LINE_LIMIT = 64 * 1024 * 1024


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy messages line by line until EOF, then close the writer so the other side sees EOF too."""
    while line := await reader.readline():
        if not line.strip():
            continue
        message = json.loads(line)
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()
    writer.close()


async def stdio_streams() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), sys.stdout
    )
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


async def run(command: list[str]) -> int:
    child = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT
    )
    assert child.stdin is not None and child.stdout is not None
    client_in, client_out = await stdio_streams()
    await asyncio.gather(relay(client_in, child.stdin), relay(child.stdout, client_out))
    return await child.wait()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--":
        print("usage: python scripts/naive_relay.py -- CMD [ARGS...]", file=sys.stderr)
        return 2
    return asyncio.run(run(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
