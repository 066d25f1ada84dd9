"""What the end-to-end sandbox tests share: the unprivileged user they run mcpshield as, an
interpreter that user can start, private work folders, and profiles with a `[sandbox]`."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from conftest import FAKE_SERVER, LineClient, sandbox_unavailable

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
#: The user created for the tests that must not run as root.
TEST_USER: Final = "mcpshield-sbx"
#: A venv on the system's Python for that user (scripts/setup makes it when the main one is
#: out of their reach, e.g. under /root).
UNPRIVILEGED_VENV: Final = REPO_ROOT / ".tools" / "venv-unprivileged"
#: Bound on creating the user.
USERADD_TIMEOUT_S: Final = 30


@dataclass(frozen=True)
class Who:
    """Whom mcpshield runs as in a test: root (as CI and this machine run) or the test user."""

    name: str
    uid: int
    gid: int
    python: str

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def popen_options(self) -> dict[str, Any]:
        if self.is_root:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def root() -> Who:
    return Who("root", os.getuid(), os.getgid(), sys.executable)


def unprivileged() -> Who:
    """The test user (created if missing); skips, or fails under MCPSHIELD_REQUIRE_SANDBOX=1,
    where it cannot be had."""
    if os.getuid() != 0:
        sandbox_unavailable("creating the unprivileged test user needs root")
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            sandbox_unavailable("useradd is missing")
        cmd = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER]
        done = subprocess.run(cmd, capture_output=True, timeout=USERADD_TIMEOUT_S, check=False)
        if done.returncode not in (0, 9):  # 9: created meanwhile by a parallel test
            sandbox_unavailable(f"useradd failed: {done.stderr.decode(errors='replace').strip()}")
        entry = pwd.getpwnam(TEST_USER)
    return Who(TEST_USER, entry.pw_uid, entry.pw_gid, _python_for(entry.pw_uid))


def _python_for(uid: int) -> str:
    if _reachable(Path(sys.executable)):
        return sys.executable
    candidate = UNPRIVILEGED_VENV / "bin" / "python"
    if candidate.exists() and _reachable(candidate):
        return str(candidate)
    sandbox_unavailable(f"no Python the user {uid} can run: run scripts/setup --dev as root")


def _reachable(path: Path) -> bool:
    """Whether others can traverse to `path` and run it (checked on the resolved path)."""
    real = path.resolve()
    for folder in real.parents:
        if not os.stat(folder).st_mode & 0o001:
            return False
    return bool(os.stat(real).st_mode & 0o005 == 0o005)


@contextmanager
def workdir(who: Who) -> Iterator[Path]:
    """A fresh folder owned by `who`, removed afterwards: outside pytest's 0700 tmp folders, and
    outside /tmp, which bubblewrap replaces with a private one."""
    path = Path(tempfile.mkdtemp(prefix="mcpshield-sbx-", dir="/var/tmp"))
    try:
        os.chmod(path, 0o755)  # noqa: S103 - the test user must reach what is inside
        os.chown(path, who.uid, who.gid)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_dirs(who: Who, *paths: Path) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, who.uid, who.gid)


def environment(who: Who, work: Path) -> dict[str, str]:
    """mcpshield's environment: its own home, logs, approver and caches under `work`."""
    home = work / "home"
    dirs = [home, work / "logs", work / "approver", work / "cache"]
    make_dirs(who, *dirs)
    for folder in dirs[1:]:
        os.chmod(folder, 0o700)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MCPSHIELD_")}
    env.update(
        HOME=str(home),
        USER=who.name,
        LOGNAME=who.name,
        MCPSHIELD_LOG_DIR=str(work / "logs"),
        MCPSHIELD_APPROVER_DIR=str(work / "approver"),
        MCPSHIELD_CACHE_DIR=str(work / "cache"),
        XDG_RUNTIME_DIR=str(work / "approver"),
    )
    return env


def write_profile(who: Who, work: Path, sandbox: str, tools: str = 'default = "allow"') -> Path:
    path = work / "profile.toml"
    path.write_text(f'[server]\nname = "sbx"\n\n[tools]\n{tools}\n\n[sandbox]\n{sandbox}\n')
    os.chown(path, who.uid, who.gid)
    return path


def shield_fake(who: Who, work: Path, profile: Path, *flags: str, cwd: Path | None = None) -> LineClient:
    """`mcpshield run` around the fake server, as `who`, from `cwd` (default: `work`)."""
    argv: Sequence[str] = [
        who.python, "-m", "mcpshield", "run", "--profile", str(profile), *flags, "--",
        who.python, FAKE_SERVER,
    ]  # fmt: skip
    return LineClient(argv, env=environment(who, work), cwd=str(cwd or work), **who.popen_options())


def text(answer: dict[str, Any]) -> str:
    assert "result" in answer, answer
    return str(answer["result"]["content"][0]["text"])


def is_error(answer: dict[str, Any]) -> bool:
    return bool(answer["result"].get("isError"))
