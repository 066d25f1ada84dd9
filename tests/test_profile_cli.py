"""`mcpshield profile list | show | check | init` as a user runs them: real subprocesses."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path

import psutil
import pytest
from conftest import FAKE_SERVER
from hypothesis import given
from hypothesis import strategies as st

from mcpshield.policy.tools import ToolJudge
from mcpshield.profile.model import Profile
from mcpshield.profile.probe import ServerReport, ToolInfo
from mcpshield.profile.starter import escape_glob, is_read_looking, match_pattern, render
from mcpshield.profile.tomltext import toml_string

ROOT = Path(__file__).resolve().parent.parent
#: Bound on one CLI run; `profile init` bounds its own conversation at 30 s.
CLI_TIMEOUT_S = 60.0
MCP_SERVER_TIME = Path(sysconfig.get_path("scripts")) / "mcp-server-time"


def mcpshield(*args: str, config: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MCPSHIELD_CONFIG_DIR": str(config)}
    return subprocess.run(
        [sys.executable, "-m", "mcpshield", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def processes_mentioning(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def one_error_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode != 0
    assert len(lines) == 2 and lines[0].startswith("mcpshield: ") and lines[1].startswith("Tip: "), result.stderr
    assert expected in lines[0], lines[0]
    assert result.stdout == ""


# -- list, show, check ----------------------------------------------------------------------------


def test_profile_list_shows_every_profile_with_where_it_lives(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mine.toml").write_text('[server]\ndescription = "my own"\nmatch = ["my-server"]\n')
    result = mcpshield("profile", "list", config=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert {"filesystem", "github", "time", "everything", "mine"} <= rows.keys()
    assert "user" in rows["mine"] and "my-server" in rows["mine"] and "my own" in rows["mine"]
    assert "shipped" in rows["time"] and "mcp-server-time" in rows["time"]
    assert str(tmp_path / "profiles") in result.stdout


def test_profile_show_prints_the_effective_profile_as_toml_with_its_chain(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "filesystem.toml").write_text('extends = "filesystem"\n[tools]\ndeny = ["move_file"]\n')
    result = mcpshield("profile", "show", "filesystem", config=tmp_path)
    assert result.returncode == 0, result.stderr
    header = [line for line in result.stdout.splitlines() if line.startswith("#")]
    assert str(tmp_path / "profiles" / "filesystem.toml") in header[0]
    assert "extends" in header[1] and str(ROOT / "profiles" / "filesystem.toml") in header[1]
    shown = Profile.model_validate(tomllib.loads(result.stdout))
    assert shown.tools.deny == ("move_file",)
    assert "read_text_file" in shown.tools.allow
    assert shown.rules  # the base's rules come along


def test_profile_show_of_an_unknown_name_is_an_error(tmp_path: Path) -> None:
    one_error_line(mcpshield("profile", "show", "no-such-profile", config=tmp_path), "no profile named")


@pytest.mark.parametrize("ref", ["time", "profiles/filesystem.toml"])
def test_profile_check_says_ok_with_source_and_name(ref: str, tmp_path: Path) -> None:
    result = mcpshield("profile", "check", ref, config=tmp_path, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ") and result.stdout.rstrip().endswith(f"(profile {Path(ref).stem})")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[tools]\ndefault = "deny\n', "bad.toml:2:"),
        ('[tools]\ndefualt = "deny"\n', "bad.toml:2: tools.defualt: unknown key `defualt`"),
        ('[tools]\ndefault = "maybe"\n', 'bad.toml:2: tools.default: must be one of allow, ask, deny (got "maybe")'),
        (
            '[[rules]]\ntool = "a"\naction = "deny"\n[rules.args.p]\nmatches = ["["]\n',
            "bad.toml:5: rules[1].args.p.matches",
        ),
        ('[[rules]]\ntool = "a"\naction = "deny"\n[rules.args.p]\nwithin = 3\n', "bad.toml:5: rules[1].args.p.within"),
        ('extends = "no-such-base"\n', "bad.toml:1: extends: extends 'no-such-base'"),
    ],
    ids=["bad toml", "unknown key", "bad action", "bad regex", "bad type in a rule", "missing base"],
)
def test_profile_check_of_a_malformed_profile_is_one_line_and_a_tip(text: str, expected: str, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(text)
    one_error_line(mcpshield("profile", "check", str(tmp_path / "bad.toml"), config=tmp_path), expected)


# -- init -----------------------------------------------------------------------------------------


def fake_server(tmp_path: Path, *flags: str) -> list[str]:
    """The fake server with a marker (its --record file) to find its processes by."""
    return [sys.executable, FAKE_SERVER, "--record", str(tmp_path / "marker.jsonl"), *flags]


def init(name: str, server: Sequence[str], config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return mcpshield("profile", "init", name, *options, "--", *server, config=config)


@pytest.mark.parametrize("linger", [False, True], ids=["exits on EOF", "lingers"])
def test_profile_init_writes_a_private_valid_starter_profile_and_leaves_no_process(
    linger: bool, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    result = init("fake", fake_server(tmp_path, *(["--linger"] if linger else [])), config)
    assert result.returncode == 0, result.stderr
    path = config / "profiles" / "fake.toml"
    assert str(path) in result.stdout and "mcpshield profile check fake" in result.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == stat.S_IMODE(config.stat().st_mode) == 0o700
    text = path.read_text()
    profile = Profile.model_validate(tomllib.loads(text))
    assert profile.tools.default == "deny"
    assert profile.server.match == ("fake_server.py",)
    assert "list_changed" in profile.tools.allow and {"echo", "env", "exit"} <= set(profile.tools.ask)
    assert all(name.split("_")[0] in {"get", "list", "read", "search", "find", "describe", "show", "view"}
               for name in profile.tools.allow)  # fmt: skip
    assert "    # Return the text.\n" in text and "    # Return the server's environment as JSON text.\n" in text
    assert processes_mentioning(str(tmp_path / "marker.jsonl")) == []
    assert mcpshield("profile", "check", "fake", config=config).returncode == 0


def test_profile_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    output = tmp_path / "out" / "mine.toml"
    output.parent.mkdir()
    output.write_text("# mine\n")
    refused = init("mine", fake_server(tmp_path), tmp_path, "--output", str(output))
    one_error_line(refused, "already exists")
    assert output.read_text() == "# mine\n"
    replaced = init("mine", fake_server(tmp_path), tmp_path, "--output", str(output), "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert output.read_text().startswith("# Starter profile")
    assert stat.S_IMODE(output.stat().st_mode) == 0o600


def test_profile_init_of_a_server_that_cannot_start_writes_nothing(tmp_path: Path) -> None:
    result = init("nothing", ["/no/such/server"], tmp_path)
    assert result.returncode == 127
    assert not (tmp_path / "profiles").exists()


def test_profile_init_of_a_server_that_exits_at_once_explains_and_writes_nothing(tmp_path: Path) -> None:
    result = init("quitter", [sys.executable, "-c", "import sys; sys.stderr.write('missing token\\n')"], tmp_path)
    one_error_line(result, "closed stdout before answering initialize")
    assert "missing token" in result.stderr
    assert not (tmp_path / "profiles").exists()


def test_profile_init_refuses_a_bad_name_before_starting_anything(tmp_path: Path) -> None:
    one_error_line(init("../escape", fake_server(tmp_path), tmp_path), "cannot be a profile name")
    assert not (tmp_path / "marker.jsonl").exists()


def test_a_server_that_never_answers_is_given_up_on_in_time_and_ended(tmp_path: Path) -> None:
    marker = str(tmp_path / "silent-server")
    silent = (sys.executable, "-c", "import time; time.sleep(60)", marker)
    code = (
        "import os, sys\n"
        "from mcpshield.profile.probe import probe\n"
        "from mcpshield.supervisor import LaunchSpec\n"
        "try:\n"
        f"    probe(LaunchSpec({silent!r}, dict(os.environ)), timeout=0.5)\n"
        "except Exception as exc:\n"
        "    sys.exit(str(exc))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
    )
    assert "no answer to initialize within 0.5 s" in result.stderr
    assert processes_mentioning(marker) == []


@pytest.mark.real
def test_profile_init_against_the_real_time_server(tmp_path: Path) -> None:
    assert MCP_SERVER_TIME.exists(), "mcp-server-time is missing: run scripts/test, which installs it"
    result = init("mytime", [str(MCP_SERVER_TIME)], tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "profiles" / "mytime.toml").read_text()
    profile = Profile.model_validate(tomllib.loads(text))
    assert (profile.tools.allow, profile.tools.ask) == (("get_current_time",), ("convert_time",))
    assert profile.server.match == ("mcp-server-time",)
    assert "# Get current time in a specific timezone" in text


# -- the starter profile, pure ---------------------------------------------------------------------


def tool(name: str, description: str = "", **annotations: object) -> ToolInfo:
    return ToolInfo(name, description, dict(annotations))


def test_read_looking_means_a_read_verb_first_and_no_secret_word() -> None:
    allowed = ["get_file", "list_issues", "read-graph", "searchNodes", "describe_table", "view_x", "find"]
    asked = ["fetch", "query", "write_file", "git_status", "get-env", "getApiKey", "list_secrets", "delete_get"]
    assert [name for name in allowed if is_read_looking(tool(name))] == allowed
    assert [name for name in asked if is_read_looking(tool(name))] == []
    assert not is_read_looking(tool("get_thing", readOnlyHint=False))
    assert not is_read_looking(tool("list_and_purge", destructiveHint=True))


def test_the_match_pattern_is_the_package_or_the_program_never_the_arguments() -> None:
    cases = {
        ("npx", "-y", "@modelcontextprotocol/server-postgres", "postgresql://u:pw@h/db"): "@modelcontextprotocol/"
        "server-postgres",
        ("uvx", "mcp-server-fetch@latest"): "mcp-server-fetch",
        ("uvx", "SETTING=1", "my-server"): "my-server",
        ("npx", "-y", "@playwright/mcp@latest"): "@playwright/mcp",
        ("uvx", "mcp-server-time"): "mcp-server-time",
        ("uvx", "mcp-server-fetch==2025.1.1"): "mcp-server-fetch",
        ("python3", "-m", "my_server", "--token", "x"): "my_server",
        ("/opt/servers/my-server", "--token=abc"): "my-server",
    }  # fmt: skip
    for argv, pattern in cases.items():
        assert match_pattern(argv) == pattern, argv


def test_hostile_tool_names_and_descriptions_cannot_break_the_toml_or_the_terminal() -> None:
    hostile = [
        tool('evil"]\n[tools]\ndefault = "allow', 'line one\n[tools]\ndefault = "allow"\x1b[2J\u202e'),
        tool("get_\\x\x00\x7f", "\x07bell " + "long " * 100),
        tool("read_\ud800bad", "surrogates cannot be written"),
        tool("echo", "first"),
        tool("echo", "duplicate"),
    ]
    text = render("hostile", ["server"], ServerReport("srv\x1b]0;title\x07", "1\n[tools]", tuple(hostile)))
    profile = Profile.model_validate(tomllib.loads(text))
    assert profile.tools.default == "deny"
    assert profile.tools.ask == ('evil"]\n[[]tools]\ndefault = "allow', "echo")  # a glob matching only that name
    assert profile.tools.allow == ("get_\\x\x00\x7f",)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert all(len(line) < 140 for line in comments)


def test_a_tool_name_with_glob_characters_is_written_as_a_glob_matching_only_that_tool() -> None:
    names = ["read_[x]*", "get_?", "list_[!a]", "write_*", "read_x", "read_[x]zzz", "get_a", "list_b", "write_file"]
    text = render("globby", ["server"], ServerReport("srv", "1", tuple(tool(name) for name in names)))
    profile = Profile.model_validate(tomllib.loads(text))
    judge = ToolJudge(profile)
    for name in names:
        assert judge.decide(name, {}).action == ("allow" if is_read_looking(tool(name)) else "ask"), name
    written = profile.tools.allow + profile.tools.ask
    for name in names:
        assert [glob for glob in written if fnmatchcase(name, glob)] == [escape_glob(name)], name
    assert "write_[*]" in profile.tools.ask
    assert judge.decide("write_everything", {}).action == "deny"
    assert judge.decide("read_xyz", {}).action == "deny"


def test_the_starter_suggests_a_sandbox_that_is_valid_once_uncommented() -> None:
    text = render("plain", ["server"], ServerReport("srv", "1", (tool("read_file"),)))
    assert Profile.model_validate(tomllib.loads(text)).sandbox is None
    start = text.index("# [sandbox]")
    uncommented = text[:start] + "\n".join(line.removeprefix("# ") for line in text[start:].splitlines()) + "\n"
    sandbox = Profile.model_validate(tomllib.loads(uncommented)).sandbox
    assert sandbox is not None and sandbox.network is False and sandbox.memory_mb == 2048


@given(name=st.text(min_size=1, max_size=20).filter(lambda n: not any(0xD800 <= ord(c) <= 0xDFFF for c in n)))
def test_every_tool_name_is_written_as_a_toml_string_and_glob_that_mean_exactly_it(name: str) -> None:
    assert tomllib.loads(f"x = {toml_string(name)}")["x"] == name
    assert fnmatchcase(name, escape_glob(name))
    assert not fnmatchcase(name + "x", escape_glob(name))


def test_a_match_pattern_never_holds_glob_characters_it_did_not_mean() -> None:
    assert match_pattern(["/opt/bin/my[server]", "--port", "1"]) == "/opt/bin/my[[]server]"
    assert match_pattern(["uvx", "weird*name", "my-server"]) == "my-server"


def real_servers() -> dict[str, list[str]]:
    node = shutil.which("node") or "node"
    npm = ROOT / ".tools" / "npm" / "node_modules" / "@modelcontextprotocol"
    scripts = Path(sysconfig.get_path("scripts"))
    return {
        "everything": [node, str(npm / "server-everything" / "dist" / "index.js"), "stdio"],
        "filesystem": [node, str(npm / "server-filesystem" / "dist" / "index.js"), str(ROOT)],
        "time": [str(scripts / "mcp-server-time")],
        "git": [str(scripts / "mcp-server-git"), "--repository", str(ROOT)],
    }


@pytest.mark.real
@pytest.mark.parametrize("name", ["everything", "filesystem", "time", "git"])
def test_the_shipped_profile_names_every_tool_the_real_server_lists(name: str, tmp_path: Path) -> None:
    argv = real_servers()[name]
    assert Path(argv[1] if name in ("everything", "filesystem") else argv[0]).exists(), "run scripts/test"
    listed = init(name, argv, tmp_path, "--output", str(tmp_path / "listed.toml"))
    assert listed.returncode == 0, listed.stderr
    tools = Profile.model_validate(tomllib.loads((tmp_path / "listed.toml").read_text())).tools
    shipped = Profile.model_validate(tomllib.loads((ROOT / "profiles" / f"{name}.toml").read_text()))
    named = {*shipped.tools.allow, *shipped.tools.ask, *shipped.tools.deny}
    assert {*tools.allow, *tools.ask} - named == set()
    assert shipped.server.match and any(pattern in " ".join(argv) for pattern in shipped.server.match)
