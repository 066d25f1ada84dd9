"""A pending call as lines of text for a person, every untrusted character made visible: shared
by the interactive approver and the `--tty` prompt."""

from __future__ import annotations

import json

from mcpshield.approval.protocol import Hello, Request
from mcpshield.audit.show import json_safe, visible


def detail_lines(request: Request, hello: Hello) -> list[str]:
    """Everything about one request; arguments whole, pretty-printed, with characters a terminal
    would act on or hide (controls, bidi overrides, zero-width) written as escapes."""
    lines = [
        f"tool:    {visible(request.tool)}",
        f"rule:    {visible(request.rule or '(none)')}",
        f"server:  {visible(hello.server)}",
        f"client:  {visible(hello.client or '(unknown)')}   profile: {visible(hello.profile or '(none)')}"
        f"   pid: {hello.pid}   timeout: {request.timeout_s:.0f} s",
    ]
    if request.prompt is not None:
        lines.append(f"prompt:  {visible(request.prompt)}")
    pretty = json.dumps(request.arguments, indent=2, ensure_ascii=False, sort_keys=True)
    lines.append("arguments:")
    lines.extend(json_safe(pretty.encode("utf-8", "surrogatepass")).decode("utf-8", "replace").split("\n"))
    return lines
