"""What a profile says, as frozen pydantic models: unknown keys are refused, every field documented.

The key names of `[server]`, `[tools]` and `[[rules]]` are a contract (tests outside the project
write profiles with them); the profile reference in docs/profiles.md describes every field.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcpshield.policy.hosts import check_host_entry

Action = Literal["allow", "ask", "deny"]
#: How restrictive each action is; combining two decisions keeps the more restrictive one.
STRICTNESS: dict[str, int] = {"allow": 0, "ask": 1, "deny": 2}

Scalar = str | int | float | bool | None
Globs = tuple[str, ...]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_tuple(value: object) -> object:
    """Accepts one string where a list is expected: `tool = "read_*"` means `["read_*"]`."""
    return (value,) if isinstance(value, str) else value


class ServerSection(_Model):
    """Which server the profile is for."""

    name: str | None = None
    """A short name shown in messages and the audit log; defaults to the file's name."""
    description: str | None = None
    """One line on what the server does and why the profile is shaped as it is."""
    match: Globs = ()
    """Command-line substrings (or `*` globs) that pick this profile when `run` has no `--profile`."""

    _one = field_validator("match", mode="before")(_as_tuple)


class ToolsSection(_Model):
    """Which tools exist for the client, and what happens when one is called."""

    default: Action = "ask"
    """What happens to tools no list and no rule names."""
    allow: Globs = ()
    """Tools that run without asking (globs, e.g. `read_*`)."""
    ask: Globs = ()
    """Tools that need a person's approval for each call."""
    deny: Globs = ()
    """Tools that never run and are hidden from the client; wins over every list and rule."""
    strict_args: bool = True
    """Refuse arguments the tool's input schema does not declare."""

    _one = field_validator("allow", "ask", "deny", mode="before")(_as_tuple)


class ArgCondition(_Model):
    """Conditions on one argument; a rule matches only when all of them hold.

    A list argument holds a condition only if every element does. An argument that is absent or
    of the wrong type holds no condition of an allow/ask rule, and every condition of a deny rule:
    what cannot be checked is read the restrictive way.
    """

    within: Globs | None = None
    """Paths (or file:// URIs) that must lie inside one of these directories, `~` expanded,
    resolved both as the OS does (symlinks followed) and lexically (`..` collapsed)."""
    not_within: Globs | None = None
    """Paths that must lie inside none of these directories (resolved as for `within`)."""
    matches: Globs | None = None
    """Regular expressions (Python syntax); the whole value must match one of them. A value with
    a newline is read with `.` spanning newlines and without; see docs/profiles.md."""
    not_matches: Globs | None = None
    """Regular expressions; the whole value must match none of them."""
    one_of: tuple[Scalar, ...] | None = None
    """The value must equal one of these exactly (type included: 1 is not true)."""
    max_length: Annotated[int, Field(ge=0)] | None = None
    """Strings at most this many characters; other values at most this many bytes as JSON."""
    hosts: Globs | None = None
    """URLs (http, https, ws, wss) whose host matches one of these: a host, `*.example.com`
    (subdomains only, so list `example.com` too when the bare domain is meant), a CIDR range
    (`10.0.0.0/8`, `fd00::/8`) or `*`."""

    _one = field_validator("within", "not_within", "matches", "not_matches", "hosts", mode="before")(_as_tuple)

    @field_validator("matches", "not_matches")
    @classmethod
    def _compiles(cls, patterns: Globs | None) -> Globs | None:
        for pattern in patterns or ():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
        return patterns

    @field_validator("hosts")
    @classmethod
    def _host_entries(cls, entries: Globs | None) -> Globs | None:
        for entry in entries or ():
            check_host_entry(entry)
        return entries

    @model_validator(mode="after")
    def _says_something(self) -> ArgCondition:
        if not self.model_fields_set:
            raise ValueError("names no condition (within, not_within, matches, not_matches, one_of, max_length, hosts)")
        return self


class Rule(_Model):
    """An argument-level rule. Rules are consulted in order after `[tools] deny` and before the
    allow/ask lists and the default; the first rule whose tool and conditions match decides."""

    tool: Globs
    """The tool (or tools: globs, or a list of them) the rule is about."""
    action: Action
    """What happens when every condition holds."""
    args: dict[str, ArgCondition] = Field(default_factory=dict)
    """Conditions per argument name; none means the rule matches every call of the tool."""
    reason: str | None = None
    """Told to the model when this rule refuses a call, so it can change course."""

    _one = field_validator("tool", mode="before")(_as_tuple)


class NamedSection(_Model):
    """Allow/ask/deny by name or URI glob, for resources and prompts."""

    default: Action = "allow"
    """What happens to names no list matches."""
    allow: Globs = ()
    ask: Globs = ()
    deny: Globs = ()
    """Wins over `allow` and `ask`; denied entries are also removed from list answers."""

    _one = field_validator("allow", "ask", "deny", mode="before")(_as_tuple)


class ServerRequestsSection(_Model):
    """What the server may ask of the client (as requests, or in the 2026-07-28 era inside an
    `input_required` result)."""

    sampling: Action = "ask"
    """`sampling/createMessage`: the server asks the client's model to generate text."""
    elicitation: Action = "allow"
    """`elicitation/create`: the server asks the user, through the client, for input."""
    roots: Action = "allow"
    """`roots/list`: the server asks which directories the client works in."""
    roots_within: Globs | None = None
    """When set, roots/list answers keep only the roots inside these directories."""

    _one = field_validator("roots_within", mode="before")(_as_tuple)


class LimitsSection(_Model):
    """Rate limits on tool calls; a call over a limit is refused with a hint of when to retry."""

    calls_per_minute: Annotated[int, Field(gt=0)] | None = None
    """Tool calls of any tool per rolling minute."""
    max_concurrent: Annotated[int, Field(gt=0)] | None = None
    """Tool calls in flight at once."""
    tools: dict[str, Annotated[int, Field(gt=0)]] = Field(default_factory=dict)
    """Per-tool calls per rolling minute, by tool glob (`"write_*" = 10`)."""
    identical_calls_per_minute: Annotated[int, Field(gt=0)] | None = 20
    """Loop breaker: calls of one tool with the same arguments per rolling minute."""


class AuditSection(_Model):
    """What the audit log keeps (see docs/audit.md). Decisions are always logged; arguments and
    results only where asked, redacted and cut to a bound."""

    enabled: bool = True
    """false: this server's sessions write no audit log at all."""
    record_arguments: bool = False
    """Keep each request's arguments (tool calls), not only their SHA-256."""
    record_results: bool = False
    """Keep each answer's result."""
    max_recorded_bytes: Annotated[int, Field(gt=0, le=1_048_576)] = 4096
    """Recorded arguments or results longer than this (as JSON) are cut to it."""
    on_log_failure: Literal["stop", "continue"] = "stop"
    """When the log cannot be written (disk full, folder gone): "stop" refuses every call from
    then on, "continue" goes on without a log (one line on stderr says so)."""


class AlwaysRule(_Model):
    """A call a person approved "always" in `mcpshield approvals` (mcpshield appends these):
    where the profile says `ask`, this exact call runs without asking. It never turns a `deny`."""

    tool: str
    """The tool's exact name (not a glob)."""
    args_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """SHA-256 of the call's canonical arguments (sorted keys, no spaces), as the approver and
    the audit log show it: other arguments are asked about as before."""


class ApprovalSection(_Model):
    """How a call the profile says to `ask` about is put to a person (see docs/approvals.md)."""

    timeout_s: Annotated[float, Field(gt=0, le=600)] = 45
    """How long a call waits for a decision before it is refused. Below the ~60 s after which
    Claude Desktop and other TypeScript-SDK clients give up on a call."""
    elicitation: bool = True
    """Also ask in the client, through MCP elicitation, when the client declared it: the first
    answer from either channel decides. It approves one call once, never for the session or
    always. False: only the terminal approver (`mcpshield approvals`) can approve."""
    always: tuple[AlwaysRule, ...] = ()
    """Calls approved "always" (`[[approval.always]]` tables, written by mcpshield): united
    across `extends`."""


class SandboxSection(_Model):
    """The OS sandbox the server runs in (see docs/sandbox.md). Without this table the server runs
    unsandboxed; with it, every key has the default shown and isolation that cannot be had here
    stops the launch unless `enforcement = "best_effort"`."""

    enforcement: Literal["required", "best_effort"] = "required"
    """"required": refuse to start when any restriction below cannot be enforced on this machine;
    "best_effort": start anyway and say once on stderr (and in the audit log) what is not enforced."""
    backend: Literal["auto", "bubblewrap", "landlock", "seatbelt", "none"] = "auto"
    """"auto" picks the strongest that works here (`mcpshield doctor` shows which)."""
    network: bool | Globs = False
    """false: no network (a loopback of its own at most); true: any; a list of hosts (names, `*.`
    globs, CIDR ranges, as in a rule's `hosts`): HTTP and HTTPS through mcpshield's egress proxy
    to those hosts only."""
    network_deny: Globs | None = None
    """Hosts the egress proxy refuses even when `network` lists them (checked first, also
    against the addresses a name resolves to); absent: the cloud metadata ranges
    (169.254.0.0/16, fe80::/10, fd00:ec2::254, 100.100.100.200)."""
    read: Globs | None = None
    """Directories or files the server may read, besides the system directories every program
    needs; absent: the whole filesystem except `deny`."""
    write: Globs = ()
    """Directories or files the server may write (and read). They must exist."""
    deny: Globs | None = None
    """Neither readable nor writable, whatever `read` and `write` say; absent: a default list of
    credential stores (~/.ssh, ~/.aws, ~/.gnupg, ~/.config/gcloud, ... see docs/sandbox.md)."""
    memory_mb: Annotated[int, Field(ge=0)] = 0
    """The server's whole process tree is killed when its resident memory passes this; 0: no limit."""
    cpu_seconds: Annotated[int, Field(ge=0)] = 0
    """CPU time each process of the server may use in all (RLIMIT_CPU); 0: no limit."""
    max_open_files: Annotated[int, Field(ge=32, le=1_048_576)] = 1024
    """Open files per process (RLIMIT_NOFILE); node needs a few dozen to start."""
    caches: bool = True
    """Give the server private, writable npm, uv and pip caches (per server, under mcpshield's
    cache directory) so `npx` and `uvx` servers can start."""

    _one = field_validator("read", "write", "deny", "network_deny", mode="before")(_as_tuple)

    @field_validator("network", mode="before")
    @classmethod
    def _network(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @field_validator("network", "network_deny")
    @classmethod
    def _host_entries(cls, entries: bool | Globs | None) -> bool | Globs | None:
        if isinstance(entries, tuple):
            for entry in entries:
                check_host_entry(entry)
        return entries

    @field_validator("read", "write", "deny")
    @classmethod
    def _paths(cls, paths: Globs | None) -> Globs | None:
        for path in paths or ():
            if not (path.startswith(("/", "~/")) or path == "~"):
                raise ValueError(f"{path!r}: sandbox paths are absolute or start with ~/")
            if "\x00" in path:
                raise ValueError("a sandbox path cannot contain a NUL byte")
            if any(char in path for char in "*?["):
                raise ValueError(f"{path!r}: sandbox paths are literal; `*`, `?` and `[` are not expanded")
        return paths


class Profile(_Model):
    """One server's least-privilege policy."""

    extends: str | None = None
    """A profile (name or path) this one narrows: nothing the base denies or asks about can run
    more freely here."""
    server: ServerSection = Field(default_factory=ServerSection)
    tools: ToolsSection = Field(default_factory=ToolsSection)
    rules: tuple[Rule, ...] = ()
    resources: NamedSection = Field(default_factory=NamedSection)
    """`resources/read`, `resources/subscribe` and list answers, by URI glob."""
    prompts: NamedSection = Field(default_factory=NamedSection)
    """`prompts/get` and list answers, by prompt name glob."""
    server_requests: ServerRequestsSection = Field(default_factory=ServerRequestsSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    audit: AuditSection = Field(default_factory=AuditSection)
    approval: ApprovalSection = Field(default_factory=ApprovalSection)
    sandbox: SandboxSection | None = None
    """Absent: the server runs without an OS sandbox (the policy still applies)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Variables the server gets on top of the minimal environment, each `keyring:SECRET` (a
    secret from the OS keyring, see `mcpshield secret set`), `env:VAR` (from mcpshield's own
    environment) or a literal value. Every value is redacted from what the server sends back."""

    @field_validator("env")
    @classmethod
    def _env_entries(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name (letters, digits and _)")
            kind, _, ref = value.partition(":")
            if kind == "keyring" and not SECRET_NAME.fullmatch(ref):
                raise ValueError(f"{name} = {value!r}: a secret name is letters, digits, '.', '_' and '-'")
            if kind == "env" and not ENV_NAME.fullmatch(ref):
                raise ValueError(f"{name} = {value!r}: `env:` needs a variable name")
        return env


#: An environment variable's name, as POSIX shells accept it.
ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: A secret's name in the keyring (and in `keyring:NAME`).
SECRET_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class LoadedProfile:
    """A profile as found: its name, where it came from, and its `extends` chain.

    `chain` runs from the root base to this profile; each element is already merged with the
    ones before it (see `profile.load.merge`). The policy enforces the last one and lets every
    earlier one make it stricter: what a base denies stays denied, what it asks is still asked.
    """

    __slots__ = ("chain", "name", "source")

    def __init__(self, name: str, source: str, chain: tuple[Profile, ...]) -> None:
        assert chain, "a loaded profile has at least itself in its chain"
        self.name = name
        self.source = source
        self.chain = chain

    @property
    def profile(self) -> Profile:
        """The effective profile: this one merged over its bases."""
        return self.chain[-1]

    def __repr__(self) -> str:
        return f"LoadedProfile({self.name!r}, {self.source!r}, depth={len(self.chain)})"
