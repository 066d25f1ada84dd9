"""Tier 1: mcpshield's own lines on stderr cannot act on the terminal, whatever a server named."""

from __future__ import annotations

from mcpshield.stderr import Stderr


class Collect:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def test_a_report_naming_a_hostile_tool_shows_its_controls_and_bidi_characters_as_escapes() -> None:
    stderr, out = Stderr(None), Collect()
    stderr.out = out
    stderr.report("approved write\x1b[2J\u202eelif always: the rule is in /home/me/é.toml")
    assert (
        out.data == "mcpshield: approved write\\u001b[2J\\u202eelif always: the rule is in /home/me/é.toml\n".encode()
    )


def test_the_servers_own_stderr_passes_as_it_is() -> None:
    stderr, out = Stderr(None), Collect()
    stderr.out = out
    stderr.server_data(b"\x1b[31mred\x1b[0m\n")
    assert out.data == b"\x1b[31mred\x1b[0m\n"
