"""The command line: the only place argv is read. Turns a ShieldError into one line and a Tip."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mcpshield import __version__
from mcpshield.errors import ShieldError, UsageError

_DESCRIPTION = """\
mcpshield wraps a local stdio MCP server: it starts the server as its child and relays
its JSON-RPC messages both ways, refusing what is malformed and leaving no process behind.
"""

_RUN_EPILOG = """\
example, in a client's config:
  "command": "/home/me/.local/bin/mcpshield",
  "args": ["run", "--", "/usr/bin/npx", "-y", "@modelcontextprotocol/server-everything"]

The server gets a minimal environment (PATH, HOME, USER, LOGNAME, SHELL, TERM, LANG, LC_*,
TMPDIR, TZ, SSL_CERT_FILE, SSL_CERT_DIR, NODE_EXTRA_CA_CERTS) plus what --env passes.
mcpshield exits with the server's exit status (128+N if a signal N ended it).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcpshield", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"mcpshield {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND")

    run = verbs.add_parser(
        "run",
        help="start a stdio MCP server and relay its messages",
        description="Start CMD as a child and relay its stdio JSON-RPC messages both ways.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="pass NAME from mcpshield's environment to the server (or set it to VALUE); repeatable",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]", help="the server's command")

    verbs.add_parser(
        "demo",
        help="wrap the built-in demo server and drive it with a scripted client",
        description="Show mcpshield's main job on the demo server shipped in the package.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.verb == "run":
            return _run(args)
        if args.verb == "demo":
            from mcpshield.demo.client import main as demo_main

            return demo_main()
        parser.print_help(sys.stderr)
        return 2
    except ShieldError as err:
        sys.stderr.write(f"mcpshield: {err}\nTip: {err.tip}\n")
        return err.exit_code
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError(
            "mcpshield run needs the server's command",
            "put it after --, e.g. mcpshield run -- npx -y @modelcontextprotocol/server-everything",
        )
    _check_env_flags(args.env)
    from mcpshield.runner import RunConfig, run_server
    from mcpshield.supervisor import LaunchSpec, minimal_env, parse_env_flags

    env = minimal_env(os.environ, parse_env_flags(args.env))
    return run_server(RunConfig(launch=LaunchSpec(tuple(command), env)))


def _check_env_flags(flags: Sequence[str]) -> None:
    for flag in flags:
        name = flag.partition("=")[0]
        if not name or not name.replace("_", "a").isalnum():
            raise UsageError(
                f"--env {flag!r} does not start with a variable name",
                "use --env NAME to pass a variable through, or --env NAME=VALUE to set one",
            )


if __name__ == "__main__":
    raise SystemExit(main())
