"""The command line: the only place argv is read. Turns a ShieldError into one line and a Tip."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from mcpshield import __version__
from mcpshield.errors import ShieldError, UsageError

if TYPE_CHECKING:
    from mcpshield.policy.redact import Redactor
    from mcpshield.profile.model import LoadedProfile
    from mcpshield.runner import AuditConfig
    from mcpshield.sandbox.launch import SandboxedLaunch
    from mcpshield.supervisor import LaunchSpec

_DESCRIPTION = """\
mcpshield wraps a local stdio MCP server: it starts the server as its child and relays
its JSON-RPC messages both ways, refusing what is malformed and leaving no process behind.
"""

_RUN_EPILOG = """\
example, in a client's config:
  "command": "/home/me/.local/bin/mcpshield",
  "args": ["run", "--", "/usr/bin/npx", "-y", "@modelcontextprotocol/server-everything"]

The server gets a minimal environment (PATH, HOME, USER, LOGNAME, SHELL, TERM, LANG, LC_*,
TMPDIR, TZ, SSL_CERT_FILE, SSL_CERT_DIR, NODE_EXTRA_CA_CERTS), plus what --env passes, plus
the profile's [env] (keyring secrets; its values are redacted from all the server sends back).
mcpshield exits with the server's exit status (128+N if a signal N ended it).
Every session writes an audit log (`mcpshield audit path` says where; exit 4 if it cannot).
Tool calls the profile says to `ask` about wait for a decision in `mcpshield approvals`, or in
the client (MCP elicitation), or with --tty on this terminal; see docs/approvals.md.
A profile's [sandbox] starts the server in an OS sandbox (`mcpshield doctor` says what this
machine can enforce); exit 126 when the profile requires isolation that cannot be had here.

--profile NAME looks for NAME.toml among the user's profiles, then the shipped ones; a PATH
(with a / or ending in .toml) names a file; `none` runs without a profile. Without --profile,
the profile whose [server] match fits the command is used (`mcpshield profile list`).
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
    run.add_argument(
        "--profile",
        default=None,
        metavar="NAME|PATH|none",
        help="the profile to enforce: a name, a .toml path, or `none`; default: the one matching CMD",
    )
    run.add_argument(
        "--no-audit",
        action="store_true",
        help="write no audit log for this session (a profile can also say [audit] enabled = false)",
    )
    run.add_argument(
        "--tty",
        action="store_true",
        help="also ask on this terminal (/dev/tty) about calls that need approval when no approver or client "
        "can be asked: for line-mode clients started from a terminal (keys o once, s session, d deny)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]", help="the server's command")
    _add_profile_verbs(verbs)
    _add_secret_verbs(verbs)
    _add_audit_verbs(verbs)
    _add_approval_verbs(verbs)
    _add_doctor_verb(verbs)

    verbs.add_parser(
        "demo",
        help="wrap the built-in demo server and drive it with a scripted client",
        description="Show mcpshield's main job on the demo server shipped in the package.",
    )
    return parser


def _add_profile_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = verbs.add_parser(
        "profile",
        help="list, show, check or create profiles",
        description="Profiles say what a server may do. See docs/profiles.md.",
    )
    sub = group.add_subparsers(dest="profile_verb", metavar="SUBCOMMAND", required=True)
    sub.add_parser("list", help="list the user's and the shipped profiles")
    for verb, what in (("show", "print the effective profile as TOML"), ("check", "validate a profile")):
        sub.add_parser(verb, help=what, description=what).add_argument("ref", metavar="NAME|PATH")
    sub.add_parser(
        "init",
        parents=[_init_options()],
        help="write a starter profile from the tools a server lists",
        description="Start CMD, list its tools and write a starter profile: read-looking tools allowed, "
        "the others ask, everything else denied. Options may come before or after NAME.",
    ).add_argument("rest", nargs=argparse.REMAINDER, metavar="NAME [OPTIONS] -- CMD [ARGS...]")


def _add_secret_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = verbs.add_parser(
        "secret",
        help="store, list or remove secrets in the OS keyring; check the keyring",
        description="Secrets live in the OS keyring and reach a server only through its profile's [env] "
        '(NAME = "keyring:SECRET"). See docs/profiles.md.',
    )
    sub = group.add_subparsers(dest="keyring_verb", metavar="SUBCOMMAND", required=True)
    setter = sub.add_parser(
        "set",
        help="store a secret: prompted twice on a terminal, else read from stdin",
        description="Store a secret. On a terminal the value is asked for twice, hidden; otherwise it is "
        "read from stdin (one trailing newline removed). Never pass it as an argument.",
    )
    setter.add_argument("name", metavar="NAME")
    setter.add_argument("value", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # refused, never echoed
    sub.add_parser("list", help="the secrets stored and the ones profiles use (no values)")
    sub.add_parser("rm", help="remove a secret from the keyring").add_argument("name", metavar="NAME")
    sub.add_parser("doctor", help="which keyring backend is used, is it secure, what to do")


def _add_audit_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = verbs.add_parser(
        "audit",
        help="verify, read, summarise or prune the audit log",
        description="Every run writes a tamper-evident JSONL file per session. See docs/audit.md.",
    )
    sub = group.add_subparsers(dest="audit_verb", metavar="SUBCOMMAND", required=True)
    verify = sub.add_parser(
        "verify",
        help="check the hash chain of session files; exit 1 if one was tampered with",
        description="Check each file's hash chain: `ok`, the first broken line and why (exit 1), or "
        "`incomplete` for a file without its session's end (a warning only).",
    )
    verify.add_argument("paths", nargs="*", metavar="PATH", help="a session file, or a folder of them")
    verify.add_argument("--all", action="store_true", help="every session file in the log")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--since", metavar="AGE", help="only events younger than AGE: 30s, 15m, 1h, 2d, 1w")
    filters.add_argument("--session", metavar="ID", help="only the sessions whose id starts with ID")
    filters.add_argument("--json", action="store_true", help="print JSON instead of a table")
    tail = sub.add_parser(
        "tail",
        parents=[filters],
        help="show the latest requests and refusals; -f to follow",
        description="Show the last matching events: a table of requests and refused input, or with --json "
        "every matching event as its JSON line.",
    )
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C")
    tail.add_argument("-n", dest="count", default="20", metavar="N|all", help="how many to show first (default 20)")
    tail.add_argument("--tool", metavar="GLOB", help="only calls of tools matching GLOB (case-sensitive)")
    tail.add_argument("--decision", choices=("allow", "deny", "ask", "rewrite"), help="only requests so decided")
    sub.add_parser(
        "stats",
        parents=[filters],
        help="calls, denials, approvals, errors and latency per tool",
        description="Count requests per tool (other methods in parentheses): calls, allowed, denied, asked, "
        "errors, and the 50th and 99th percentile of the latency the requester saw.",
    )
    prune = sub.add_parser(
        "prune",
        help="remove session files older than an age",
        description="Remove the session files whose session started and last wrote before AGE ago; a file "
        "written in the last minute is always kept.",
    )
    prune.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 2w, 12h")
    prune.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    where = sub.add_parser("path", help="print where the log is (or a session's file)")
    where.add_argument("--session", metavar="ID", help="print the files of the sessions whose id starts with ID")


def _add_approval_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    approvals = verbs.add_parser(
        "approvals",
        help="answer the calls a profile marks `ask` (the terminal approver)",
        description="Listen for wrappers of this user asking a person to approve a call. On a terminal: an "
        "interactive list (o once, s session, a always: writes a rule into the user's profile after a y/n "
        "confirmation, d deny, q quit), a bell and a desktop notification per new request. With --json: one "
        "JSON line per pending request and per outcome on stdout, decisions as JSON lines on stdin; runs until "
        "SIGINT or SIGTERM, also after stdin ends. See docs/approvals.md.",
    )
    approvals.add_argument("--json", action="store_true", help="the scriptable mode: JSON lines on stdin and stdout")
    approvals.add_argument(
        "--no-notify",
        action="store_true",
        help="no desktop notification when a request arrives (the interactive mode sends one, best effort, "
        "besides the terminal bell)",
    )


def _add_doctor_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = verbs.add_parser(
        "doctor",
        help="what this machine can enforce: sandbox backends, keyring, approver, audit log",
        description="Probe what this machine can enforce (each sandbox backend, Landlock, user namespaces, "
        "seccomp) and check the keyring, the approver's socket and the audit log; print a table with fixes. "
        "Exit 0 when any profile's [sandbox] is enforced here and the audit log and approver can work, "
        "else 1. The answer is cached for `run` (in $MCPSHIELD_CACHE_DIR or the user cache folder). "
        "See docs/sandbox.md.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")


def _init_options(prog: str | None = None) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(prog=prog, add_help=False)
    options.add_argument("--force", action="store_true", help="replace an existing profile")
    options.add_argument("--output", metavar="PATH", help="write here instead of the user's profiles directory")
    options.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]", help="as for run; repeatable")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.verb == "run":
            return _run(args)
        if args.verb == "profile":
            return _profile(args)
        if args.verb == "secret":
            return _secret(args)
        if args.verb == "audit":
            return _audit(args)
        if args.verb == "approvals":
            return _approvals(args)
        if args.verb == "doctor":
            from mcpshield.sandbox.doctor import doctor

            return doctor(as_json=args.json)
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
    command = _server_command(args.command, "mcpshield run")
    _check_env_flags(args.env)
    from mcpshield.policy import PassThrough
    from mcpshield.runner import RunConfig, run_server
    from mcpshield.supervisor import LaunchSpec, minimal_env, parse_env_flags

    env = minimal_env(os.environ, parse_env_flags(args.env))
    loaded = None if args.profile == "none" else _find_profile(args.profile, command)
    if loaded is None:  # pass-through needs none of the profile machinery (start-up time)
        audit = None if args.no_audit else _audit_config(None)
        launch = LaunchSpec(tuple(command), env)
        return run_server(RunConfig(launch=launch, policy=PassThrough(), audit=audit))
    from mcpshield.policy.engine import build_policy

    policy = build_policy(loaded)  # before any secret is read: a broken profile touches no keyring
    redactor = _inject_env(loaded.profile.env, env)
    audit = None if args.no_audit or not loaded.profile.audit.enabled else _audit_config(loaded)
    sys.stderr.write(f"mcpshield: enforcing profile {loaded.name} ({loaded.source})\n")
    from mcpshield.approval.broker import ApprovalSetup

    approvals = ApprovalSetup.of(loaded, shlex.join(command), tty=args.tty)
    launch = LaunchSpec(tuple(command), env)
    sandbox = _sandbox(loaded, launch)
    config = RunConfig(
        launch=launch, policy=policy, redactor=redactor, audit=audit, approvals=approvals, sandbox=sandbox
    )
    return run_server(config)


def _sandbox(loaded: LoadedProfile, launch: LaunchSpec) -> SandboxedLaunch | None:
    """The sandboxed launch the profile's [sandbox] asks for (None: the profile has none)."""
    section = loaded.profile.sandbox
    if section is None:
        return None
    from mcpshield.sandbox.launch import prepare, resolve

    sandboxed = prepare(resolve(section), launch, loaded.name, caches=section.caches)
    sys.stderr.write(f"mcpshield: sandboxed with {sandboxed.backend}\n")
    return sandboxed


def _audit_config(loaded: LoadedProfile | None) -> AuditConfig:
    """How the session is audited: the profile's [audit], or the defaults without a profile."""
    from mcpshield.audit.trail import Recording
    from mcpshield.runner import AuditConfig

    if loaded is None:
        return AuditConfig(Recording())
    section = loaded.profile.audit
    recording = Recording(
        section.record_arguments, section.record_results, section.max_recorded_bytes, section.on_log_failure
    )
    return AuditConfig(recording, {"name": loaded.name, "source": loaded.source, "extends": len(loaded.chain) - 1})


def _find_profile(ref: str | None, command: Sequence[str]) -> LoadedProfile | None:
    """The profile named, or the one matching the command (None: `--profile none` by path or
    name); refuses to go on without one."""
    from mcpshield.profile.load import match_command, no_profile_error, resolve

    loaded = resolve(ref) if ref is not None else match_command(command)
    if loaded is None and ref is None:
        raise no_profile_error(command)
    return loaded


def _inject_env(spec: Mapping[str, str], env: dict[str, str]) -> Redactor | None:
    """Adds the profile's [env] to the server's environment `env` and returns the redactor for
    its values (None when the profile injects nothing). A name --env also set: the profile wins."""
    if not spec:
        return None
    from mcpshield.policy.redact import Redactor
    from mcpshield.secrets.resolve import resolve_env

    resolved = resolve_env(spec, os.environ)
    overridden = sorted(name for name in resolved.values if name in env and env[name] != resolved.values[name])
    if overridden:
        sys.stderr.write(f"mcpshield: the profile's [env] sets {', '.join(overridden)}, over what --env passed\n")
    env.update(resolved.values)
    return Redactor(resolved.redact)


def _server_command(words: Sequence[str], verb: str) -> list[str]:
    command = list(words)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError(
            f"{verb} needs the server's command",
            f"put it after --, e.g. {verb} -- npx -y @modelcontextprotocol/server-everything",
        )
    return command


def _profile(args: argparse.Namespace) -> int:
    from mcpshield.profile import commands

    if args.profile_verb == "list":
        return commands.list_profiles()
    if args.profile_verb in ("show", "check"):
        return commands.show(args.ref) if args.profile_verb == "show" else commands.check(args.ref)
    return _profile_init(args)


def _profile_init(args: argparse.Namespace) -> int:
    """`init [OPTIONS] NAME [OPTIONS] -- CMD`: options after NAME are parsed here, up to `--`."""
    from mcpshield.profile import commands
    from mcpshield.supervisor import minimal_env, parse_env_flags

    if not args.rest or args.rest[0].startswith("-"):
        raise UsageError(
            "mcpshield profile init needs a NAME", "e.g. mcpshield profile init time -- uvx mcp-server-time"
        )
    name, rest = args.rest[0], args.rest[1:]
    split = rest.index("--") if "--" in rest else 0
    late = _init_options(f"mcpshield profile init {name}").parse_args(rest[:split])
    command = _server_command(rest[split:], f"mcpshield profile init {name}")
    env_flags = [*args.env, *late.env]
    _check_env_flags(env_flags)
    env = minimal_env(os.environ, parse_env_flags(env_flags))
    output = late.output or args.output
    return commands.init(name, command, env, output=output, force=args.force or late.force)


def _secret(args: argparse.Namespace) -> int:
    from mcpshield.secrets import commands, doctor

    if args.keyring_verb == "set":
        return commands.set_secret(args.name, args.value)
    if args.keyring_verb == "rm":
        return commands.remove_secret(args.name)
    return commands.list_secrets() if args.keyring_verb == "list" else doctor.doctor()


def _audit(args: argparse.Namespace) -> int:
    from mcpshield.audit import commands

    if args.audit_verb == "verify":
        return commands.verify(args.paths, args.all)
    if args.audit_verb == "prune":
        return commands.prune(args.older_than, args.dry_run)
    if args.audit_verb == "path":
        return commands.path(args.session)
    if args.audit_verb == "stats":
        return commands.stats(commands.make_filter(args.since, session=args.session), args.json)
    if args.count != "all" and not (args.count.isdigit() and args.count.isascii()):
        raise UsageError(f"-n {args.count!r} is not a count", "give a number of events, or `all`")
    filt = commands.make_filter(args.since, tool=args.tool, decision=args.decision, session=args.session)
    return commands.tail(filt, None if args.count == "all" else int(args.count), args.follow, args.json)


def _approvals(args: argparse.Namespace) -> int:
    from mcpshield.approval.location import require_unix_sockets

    require_unix_sockets()
    if not args.json:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise UsageError(
                "the interactive approver needs a terminal on stdin and stdout",
                "run it in a terminal, or script it with `mcpshield approvals --json` (see docs/approvals.md)",
            )
        from mcpshield.approval.interactive import serve_interactive

        return serve_interactive(notify=not args.no_notify)
    from mcpshield.approval.scripted import serve_json

    return serve_json()


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
