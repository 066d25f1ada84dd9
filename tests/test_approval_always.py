"""Approving "always": the rule lands in the user's own profile, atomically and as appended text,
takes effect at once, and in the sessions that follow; a shipped profile is never written.

End to end: `mcpshield run` around the fake server, decided through `mcpshield approvals --json`.
Then the writer on its own, on files of every awkward shape.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LineClient, environ_with, fake_argv
from test_approval_run import Approver, Shield

from mcpshield.approval.remember import AlwaysTarget, rule_text, toml_string, write_rule
from mcpshield.errors import ApprovalError
from mcpshield.jsonrpc import arguments_hash
from mcpshield.profile.load import shipped_profiles_dir

JSON = dict[str, Any]

USER_PROFILE = """\
# My own profile: the fake server, writes asked about.
[tools]
allow = ["echo"]   # harmless
ask = ["write_file"]

[approval]
timeout_s = 30     # I am slow
elicitation = false
"""


@pytest.fixture
def approver_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "approver"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def approver(approver_dir: Path) -> Iterator[Approver]:
    running = Approver(approver_dir)
    yield running
    running.stop()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    (directory / "profiles").mkdir(parents=True)
    return directory


def _session(shield: Shield, tmp_path: Path, config_dir: Path, approver_dir: Path, profile: str) -> LineClient:
    env = environ_with(
        MCPSHIELD_APPROVER_DIR=str(approver_dir),
        MCPSHIELD_CONFIG_DIR=str(config_dir),
        MCPSHIELD_LOG_DIR=str(tmp_path / "logs"),
    )
    client = shield(*fake_argv(), flags=["--profile", profile], env=env)
    client.initialize()
    client.request("list", "tools/list")
    client.answer_for("list")
    return client


def _write(client: LineClient, request_id: int, path: Path, content: str = "approved") -> JSON:
    client.call(request_id, "write_file", {"path": str(path), "content": content})
    answer: JSON = client.answer_for(request_id, timeout=15)
    return answer


def _ran(answer: JSON) -> bool:
    return "result" in answer and not answer["result"].get("isError")


def _approve_always(approver: Approver, client: LineClient, target: Path) -> tuple[JSON, JSON]:
    """Calls write_file, approves it always; the pending line and the call's answer."""
    client.call(2, "write_file", {"path": str(target), "content": "approved"})
    pending = approver.line()
    approver.decide(pending["id"], "always")
    assert approver.line() == {"id": pending["id"], "resolved": "always"}
    return pending, client.answer_for(2, timeout=15)


def test_always_appends_a_rule_to_the_users_profile_that_the_next_session_honours(
    shield: Shield, tmp_path: Path, config_dir: Path, approver_dir: Path, approver: Approver
) -> None:
    profile = config_dir / "profiles" / "mine.toml"
    profile.write_text(USER_PROFILE)
    profile.chmod(0o640)
    target = tmp_path / "out.txt"
    client = _session(shield, tmp_path, config_dir, approver_dir, "mine")
    pending, answer = _approve_always(approver, client, target)
    assert pending["always_file"] == str(profile)
    assert approver.line() == {"id": pending["id"], "remembered": str(profile)}
    assert _ran(answer) and target.read_text() == "approved"

    text = profile.read_text()
    assert text.startswith(USER_PROFILE)  # appended: comments and layout kept
    digest = arguments_hash({"path": str(target), "content": "approved"})
    assert tomllib.loads(text)["approval"]["always"] == [{"tool": "write_file", "args_sha256": digest}]
    assert '# write_file {"content":"approved","path":' in text
    assert profile.stat().st_mode & 0o777 == 0o640  # its mode kept
    assert not list(profile.parent.glob(".*.tmp"))  # no temporary file left

    assert _ran(_write(client, 3, target))  # at once: the same call in this session runs unasked
    client.call(4, "write_file", {"path": str(target), "content": "other"})  # other arguments: asked
    assert approver.line()["arguments"]["content"] == "other"
    client.close_stdin()
    client.wait()
    (log,) = (tmp_path / "logs").glob("*/*.jsonl")
    events = {e.get("id"): e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "request"}
    assert events[2]["approval"]["decision"] == "always"
    assert events[2]["approval"]["always"] == {"file": str(profile), "written": True}
    assert events[3]["approval"]["channel"] == "session"

    approver.stop()  # nobody can be asked from here on: only the profile can let the call run
    again = _session(shield, tmp_path, config_dir, approver_dir, "mine")
    assert _ran(_write(again, 2, target))
    refused = _write(again, 3, target, content="other")
    assert "no approver is available" in refused["result"]["content"][0]["text"]
    again.close_stdin()
    again.wait()
    (later,) = set((tmp_path / "logs").glob("*/*.jsonl")) - {log}  # names sort by second, then at random
    calls = [e for e in map(json.loads, later.read_text().splitlines()) if e.get("method") == "tools/call"]
    assert calls[0]["approval"] == {
        "channel": "profile", "approver_uid": None, "decision": "always", "rule": "approval.always"
    }  # fmt: skip


def test_always_under_a_shipped_profile_writes_a_user_profile_extending_it_never_the_shipped_one(
    shield: Shield, tmp_path: Path, config_dir: Path, approver_dir: Path, approver: Approver
) -> None:
    shipped = shipped_profiles_dir() / "filesystem.toml"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    user = config_dir / "profiles" / "filesystem.toml"
    target = tmp_path / "out.txt"
    client = _session(shield, tmp_path, config_dir, approver_dir, "filesystem")
    pending, answer = _approve_always(approver, client, target)
    assert pending["always_file"] == str(user)
    assert approver.line() == {"id": pending["id"], "remembered": str(user)}
    assert _ran(answer)
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before

    written = tomllib.loads(user.read_text())
    assert written["extends"] == "filesystem"
    assert written["server"]["match"] == tomllib.loads(shipped.read_text())["server"]["match"]
    assert written["approval"]["always"][0]["tool"] == "write_file"
    assert user.stat().st_mode & 0o777 == 0o600
    client.close_stdin()
    client.wait()

    approver.stop()
    again = _session(shield, tmp_path, config_dir, approver_dir, "filesystem")  # now the user's profile
    assert _ran(_write(again, 2, target))
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before


def test_an_always_rule_never_lets_a_denied_call_run(
    shield: Shield, tmp_path: Path, config_dir: Path, approver_dir: Path
) -> None:
    denied_dir = tmp_path / "closed"
    arguments = {"path": str(denied_dir / "x"), "content": "approved"}
    profile = config_dir / "profiles" / "deny.toml"
    profile.write_text(
        'extends = "filesystem"\n\n'
        "[[rules]]\n"
        'tool = "write_file"\n'
        'action = "deny"\n'
        'reason = "closed"\n'
        "[rules.args.path]\n"
        f"within = [{toml_string(str(denied_dir))}]\n\n"
        "[tools]\n"
        'deny = ["edit_file"]\n'
        + rule_text("write_file", arguments_hash(arguments), arguments, None)
        + rule_text("edit_file", arguments_hash({}), {}, None)
    )
    client = _session(shield, tmp_path, config_dir, approver_dir, str(profile))
    client.call(2, "write_file", arguments)
    assert "closed" in client.answer_for(2)["result"]["content"][0]["text"]
    client.call(3, "edit_file", {})
    refused = client.answer_for(3)
    assert "error" in refused or refused["result"]["isError"] is True
    assert not denied_dir.exists()


# -- the writer on its own ---------------------------------------------------------------------


def _rule(path: Path, arguments: JSON | None = None) -> Path:
    arguments = {"path": "/tmp/x"} if arguments is None else arguments
    return write_rule(AlwaysTarget(path), "write_file", arguments_hash(arguments), arguments, 1000)


def test_a_rule_already_there_is_not_written_twice(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(USER_PROFILE)
    _rule(profile)
    once = profile.read_text()
    _rule(profile)
    assert profile.read_text() == once


def test_a_symbolic_link_is_followed_and_kept(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "p.toml"
    real.parent.mkdir()
    real.write_text(USER_PROFILE)
    link = tmp_path / "p.toml"
    link.symlink_to(real)
    assert _rule(link) == real
    assert link.is_symlink() and "[[approval.always]]" in real.read_text()


def test_an_inline_approval_table_is_left_alone_with_the_rule_to_add_by_hand(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('approval = { timeout_s = 5 }\n[tools]\nask = ["write_file"]\n')
    before = profile.read_text()
    with pytest.raises(ApprovalError) as caught:
        _rule(profile)
    assert "would not load" in str(caught.value)
    assert profile.read_text() == before


def test_a_file_without_a_final_newline_gets_one_before_the_rule(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('[tools]\nask = ["write_file"]  # no newline at the end')
    _rule(profile)
    assert tomllib.loads(profile.read_text())["tools"]["ask"] == ["write_file"]


def test_names_and_arguments_cannot_break_out_of_their_string_or_comment(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text("")
    tool = 'evil"\n[tools]\ndefault = "allow" \u202e\U0001f600'
    arguments = {"x": "line\n[tools]\ndefault = 'allow'"}
    write_rule(AlwaysTarget(profile), tool, arguments_hash(arguments), arguments, None)
    data = tomllib.loads(profile.read_text())
    assert "tools" not in data
    assert data["approval"]["always"][0]["tool"] == tool
    assert toml_string("\u202e") == '"\\u202e"' and toml_string("\U0001f600") == '"\\U0001f600"'


def test_a_read_only_profile_is_no_target(tmp_path: Path) -> None:
    from mcpshield.approval.remember import target_for
    from mcpshield.profile.load import load_file

    profile = tmp_path / "p.toml"
    profile.write_text(USER_PROFILE)
    profile.chmod(0o444)  # made read-only on purpose: left alone, even where root could write it
    assert target_for(load_file(profile)) is None


def test_somebody_elses_profile_is_no_target(tmp_path: Path) -> None:
    from mcpshield.approval.remember import target_for
    from mcpshield.profile.load import load_file

    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    profile = tmp_path / "p.toml"
    profile.write_text(USER_PROFILE)
    os.chown(profile, 65534, 65534)  # nobody's, and writable by root all the same
    assert target_for(load_file(profile)) is None


def test_a_link_into_the_shipped_profiles_is_never_written_through(tmp_path: Path) -> None:
    shipped = shipped_profiles_dir() / "time.toml"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    link = tmp_path / "time.toml"
    link.symlink_to(shipped)
    with pytest.raises(ApprovalError, match="shipped profile"):
        _rule(link)
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before


def test_a_users_profile_gone_during_the_session_is_not_made_anew(tmp_path: Path) -> None:
    with pytest.raises(ApprovalError, match="is gone"):
        _rule(tmp_path / "gone.toml")
    assert not (tmp_path / "gone.toml").exists()
