"""`mcpshield approvals --json`: the approver's scriptable front end (a contract: tools outside
mcpshield drive it). Pending requests and outcomes go to stdout as JSON lines, decisions come in
on stdin as JSON lines; notes go to stderr. Runs until SIGINT or SIGTERM, past stdin's end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson

from mcpshield import jsonrpc
from mcpshield.approval.protocol import CHOICES, MAX_LINE_BYTES, Hello, Request
from mcpshield.approval.server import ApproverServer

if TYPE_CHECKING:
    from mcpshield.fdio import FdReader

_DECISION_FIELDS: Final = frozenset({"id", "decision", "reason"})


class JsonLines:
    """The Sink that writes the contract's lines, each flushed at once. Non-ASCII is escaped
    (`\\uXXXX`), so no control sequence or bidi character reaches a terminal this is shown on."""

    def __init__(self) -> None:
        self.stdout_gone = anyio.Event()

    def pending(self, request: Request, hello: Hello) -> None:
        self._line(
            {
                "id": request.id,
                "tool": request.tool,
                "arguments": request.arguments,
                "server": hello.server,
                "rule": request.rule,
                "prompt": request.prompt,
                "profile": hello.profile,
                "client": hello.client,
                "pid": hello.pid,
                "args_sha256": request.args_sha256,
                "timeout_s": request.timeout_s,
                "always_file": request.always_file,
            }
        )

    def resolved(self, request_id: str, outcome: str, *, late_s: float = 0.0, late: bool = False) -> None:
        body: dict[str, Any] = {"id": request_id, "resolved": outcome}
        if late_s:
            body["late_s"] = late_s
        if late:
            body["late"] = True
        self._line(body)

    def gone(self, request_id: str) -> None:
        """Nothing is printed: the `timeout` line said how long a late decision is taken."""

    def remembered(self, request_id: str, file: str | None, error: str | None) -> None:
        if error is None:
            self._line({"id": request_id, "remembered": file})
        else:
            self._line({"id": request_id, "error": f"approved for this session only: {error}"})

    def error(self, text: str, request_id: object = None) -> None:
        self._line({"id": request_id, "error": text} if isinstance(request_id, str) else {"error": text})

    def report(self, text: str) -> None:
        sys.stderr.write(f"mcpshield approvals: {text}\n")
        sys.stderr.flush()

    def _line(self, body: dict[str, Any]) -> None:
        if self.stdout_gone.is_set():
            return
        try:
            sys.stdout.write(json.dumps(body, ensure_ascii=True) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # the reader went away; ValueError: stdout closed
            self.report("stdout is closed: nobody reads the requests any more; stopping")
            self.stdout_gone.set()


class DecisionReader:
    """Reads decision lines from fd 0 on the event loop and hands them to the server."""

    def __init__(self, server: ApproverServer, out: JsonLines) -> None:
        self._server = server
        self._out = out
        self._framer = jsonrpc.LineFramer(MAX_LINE_BYTES)
        self._reader: FdReader | None = None
        self._was_blocking: bool | None = None

    def start(self) -> None:
        from mcpshield.fdio import FdReader

        try:
            self._was_blocking = os.get_blocking(0)
            self._reader = FdReader(asyncio.get_running_loop(), 0, self._data, self._eof)
            self._reader.start()
        except OSError:  # no stdin at all: nothing to read, keep serving
            self._eof()

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.stop()
        if self._was_blocking is not None:
            os.set_blocking(0, self._was_blocking)  # a terminal shared with the shell stays usable

    def _data(self, chunk: bytes) -> None:
        for line in self._framer.feed(chunk):
            if isinstance(line, jsonrpc.Oversized):
                self._out.error(f"a decision line over {MAX_LINE_BYTES} bytes was skipped")
            elif line.strip():
                self._decision(line)

    def _eof(self) -> None:
        self._out.report("stdin ended: no more decisions are read; serving until SIGINT or SIGTERM")

    def _decision(self, line: bytes) -> None:
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._out.error("not a JSON line: expected {'id': ..., 'decision': ..., 'reason': ...}")
            return
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            self._out.error("a decision is a JSON object with a string 'id'")
            return
        request_id, choice, reason = body["id"], body.get("decision"), body.get("reason")
        if set(body) - _DECISION_FIELDS:
            self._out.error(f"unexpected field {sorted(set(body) - _DECISION_FIELDS)[0]!r}", request_id)
        elif choice not in CHOICES:
            self._out.error(f"'decision' must be one of {', '.join(CHOICES)}", request_id)
        elif reason is not None and not isinstance(reason, str):
            self._out.error("'reason' must be a string or null", request_id)
        elif not self._server.decide(request_id, choice, reason):
            self._out.error("no pending request has this id", request_id)


def serve_json() -> int:
    """Runs the scriptable approver until SIGINT/SIGTERM (exit 0) or stdout closes (exit 1)."""
    return anyio.run(_serve_json, backend="asyncio")


async def _serve_json() -> int:
    from mcpshield.approval.location import approver_dir
    from mcpshield.approval.server import listen

    out = JsonLines()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        listening = await listen(approver_dir())
        server = ApproverServer(out)
        reader = DecisionReader(server, out)
        signalled = False
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(server.serve, listening.listener)
                reader.start()
                out.report(f"listening on {listening.path}; decisions as JSON lines on stdin; Ctrl-C to stop")

                async def until_signal() -> None:
                    nonlocal signalled
                    async for _ in signals:
                        signalled = True
                        break
                    tg.cancel_scope.cancel()

                tg.start_soon(until_signal)
                await out.stdout_gone.wait()
                tg.cancel_scope.cancel()
        finally:
            reader.stop()
            await listening.aclose()
    return 0 if signalled else 1
