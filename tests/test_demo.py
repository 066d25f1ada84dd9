"""The demo that scripts/try shows a new user: it runs, and says what passed and what did not."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from mcpshield.demo.client import DEMO_PROFILE
from mcpshield.policy.args import compile_conditions
from mcpshield.profile.model import Profile


def test_the_demo_shows_passes_refusals_and_a_clean_exit() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcpshield", "demo"],
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "tools/list                         passed: tools echo, add, whoami, noisy\n" in out
    assert "tools/call add                     passed: 42" in out
    assert "tools/call add (undeclared arg)    refused: mcpshield refused this call: unexpected argument" in out
    assert "tools/call echo (a password)       refused: mcpshield refused this call: that text looks like" in out
    assert "tools/call shell (not in profile)  refused: -32602 Unknown tool: shell" in out
    assert "AWS_SECRET_ACCESS_KEY not passed" in out
    assert "a JSON-RPC batch                   refused: -32600" in out
    assert "a request with a duplicate key     refused: -32600" in out
    assert "mcpshield exited with the server's status 0" in out
    assert "mcpshield: kept non-JSON server output off the client's stdout: DEBUG: noisy tool called" in out


def test_the_demo_profile_refuses_a_password_on_any_line_of_the_text() -> None:
    (rule,) = Profile.model_validate(tomllib.loads(DEMO_PROFILE)).rules
    deny = compile_conditions(rule.args, rule.action)
    assert deny.check({"text": "my password is hunter2"}) is None
    assert deny.check({"text": "hello\nmy Password is hunter2"}) is None
    assert deny.check({"text": "hello\nworld"}) is not None
