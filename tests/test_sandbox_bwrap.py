"""bubblewrap's command line, run for real: as root and as an unprivileged user, the sandbox it
makes lets the server write where `write` says and nowhere else, hides `deny` and root's secrets,
has no network, cannot be remounted, and dies with its parent. The mount planning (links,
order) is checked without running bwrap too."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import psutil
import pytest
from conftest import EXIT_TIMEOUT_S, sandbox_unavailable, wait_all_gone
from sandboxing import Who, make_dirs, root, unprivileged, workdir

from mcpshield.errors import SandboxError
from mcpshield.sandbox.bwrap import BASE_FLAGS, bwrap_argv, system_read_dirs
from mcpshield.sandbox.mounts import MountPlan
from mcpshield.sandbox.probe import find_bwrap
from mcpshield.sandbox.spec import SandboxSpec

#: Bound on one sandboxed command (bwrap, and at most a Python start inside).
RUN_TIMEOUT_S: Final = 30.0
PEOPLE: Final = ("root", "unprivileged")

#: Run as the test's user: computes bwrap's argv as mcpshield would (its cache, its Python) and
#: execs it, or prints it.
_LAUNCHER: Final = """
import json, os, sys
from mcpshield.sandbox.bwrap import bwrap_argv, system_read_dirs
from mcpshield.sandbox.spec import SandboxSpec
request = json.loads(sys.argv[1])
fields = {k: tuple(v) if isinstance(v, list) else v for k, v in request["spec"].items()}
argv = bwrap_argv(
    SandboxSpec(**fields), request["inner"], system_read=system_read_dirs(),
    extra_write=request["extra_write"], cwd=request["cwd"], proxy_socket=request["proxy"],
)
if request["print"]:
    print(json.dumps(argv))
    sys.exit(0)
os.execv(argv[0], argv)
"""
#: Run as the test's user: the probe's trial sandbox, printed as JSON.
_TRIAL: Final = """
import json
from mcpshield.sandbox import probe
bwrap = probe.find_bwrap()
version = probe.bwrap_version(bwrap) if bwrap else ""
print(json.dumps(probe.try_bwrap(bwrap, version, probe.read_userns_sysctls(), None)))
"""
_working: dict[int, bool] = {}


@dataclass
class Box:
    """Sandboxes for one user in one work folder (/var/tmp: bubblewrap replaces /tmp)."""

    who: Who
    work: Path

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(self.work / "home"),
            "MCPSHIELD_CACHE_DIR": str(self.work / "cache"),
        }

    def argv(self, inner: Sequence[str], **spec: Any) -> list[str]:
        done = self._launch(inner, spec, print_argv=True)
        assert done.returncode == 0, done.stderr
        argv: list[str] = json.loads(done.stdout)
        return argv

    def run(self, inner: Sequence[str], **spec: Any) -> subprocess.CompletedProcess[str]:
        return self._launch(inner, spec, print_argv=False)

    def sh(self, script: str, **spec: Any) -> subprocess.CompletedProcess[str]:
        return self.run(["/bin/sh", "-c", script], **spec)

    def python(self, code: str, **spec: Any) -> subprocess.CompletedProcess[str]:
        return self.run([self.who.python, "-I", "-c", code], **spec)

    def _launch(
        self, inner: Sequence[str], spec: dict[str, Any], *, print_argv: bool
    ) -> subprocess.CompletedProcess[str]:
        request = {
            "spec": {key: value for key, value in spec.items() if key not in ("cwd", "proxy", "extra_write")},
            "inner": list(inner),
            "extra_write": list(spec.get("extra_write", ())),
            "cwd": spec.get("cwd"),
            "proxy": spec.get("proxy"),
            "print": print_argv,
        }
        return subprocess.run(
            [self.who.python, "-c", _LAUNCHER, json.dumps(request)],
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.work,
            timeout=RUN_TIMEOUT_S,
            check=False,
            **self.who.popen_options(),
        )


def _require_bwrap(box: Box) -> None:
    """Skips (or fails under MCPSHIELD_REQUIRE_SANDBOX=1) where bubblewrap cannot run for this
    user; once per user."""
    if find_bwrap() is None:
        sandbox_unavailable("bubblewrap is not installed")
    if box.who.uid not in _working:
        done = subprocess.run(
            [box.who.python, "-c", _TRIAL],
            capture_output=True,
            text=True,
            env=box.env(),
            timeout=RUN_TIMEOUT_S,
            check=False,
            **box.who.popen_options(),
        )
        assert done.returncode == 0, done.stderr
        works, problem, fix = json.loads(done.stdout)
        _working[box.who.uid] = works
        if not works:
            sandbox_unavailable(f"bubblewrap does not work for {box.who.name}: {problem} ({fix})")
    if not _working[box.who.uid]:
        sandbox_unavailable(f"bubblewrap does not work for {box.who.name}")


@pytest.fixture(params=PEOPLE)
def box(request: pytest.FixtureRequest) -> Iterator[Box]:
    who = root() if request.param == "root" else unprivileged()
    with workdir(who) as work:
        make_dirs(who, work / "home", work / "cache")
        made = Box(who, work)
        _require_bwrap(made)
        yield made


def _folders(box: Box, *names: str) -> list[Path]:
    paths = [box.work / name for name in names]
    make_dirs(box.who, *paths)
    return paths


def _owned_file(box: Box, path: Path, text: str) -> Path:
    path.write_text(text)
    os.chown(path, box.who.uid, box.who.gid)
    return path


# --- run for real ------------------------------------------------------------------------------


def test_a_write_inside_a_write_path_succeeds_and_is_visible_outside(box: Box) -> None:
    (out,) = _folders(box, "out")
    for read in (None, [str(box.work / "nothing")]):
        done = box.sh(f"echo written > {out}/note", read=read, write=[str(out)])
        assert done.returncode == 0, done.stderr
        assert (out / "note").read_text() == "written\n"


def test_a_write_outside_the_write_paths_fails(box: Box) -> None:
    out, elsewhere = _folders(box, "out", "elsewhere")
    script = f"""
        for target in {elsewhere}/f {box.work}/f /f /usr/f "$HOME/f"; do
            if echo x > "$target"; then echo "wrote $target"; fi
        done
    """
    for read in (None, [str(elsewhere)]):
        done = box.sh(script, read=read, write=[str(out)])
        assert "wrote" not in done.stdout, done.stdout
        assert "Read-only file system" in done.stderr or "Permission denied" in done.stderr
    assert not (elsewhere / "f").exists()
    assert not (box.work / "f").exists()


def test_a_denied_folder_and_a_denied_file_cannot_be_read_even_inside_a_write_path(box: Box) -> None:
    (out,) = _folders(box, "out")
    (secrets,) = _folders(box, "out/secrets")
    _owned_file(box, secrets / "key", "folder secret")
    token = _owned_file(box, out / "token", "file secret")
    attempts = (f"cat {token}", f"cat {secrets}/key", f"ls {secrets}", f"chmod 700 {secrets}", f"echo x > {token}")
    script = "".join(f'({attempt}) >/dev/null 2>&1 && echo "{attempt}"\n' for attempt in attempts) + "echo done"
    for read in (None, [str(box.work)]):
        done = box.sh(script, read=read, write=[str(out)], deny=[str(secrets), str(token)])
        assert done.stdout.strip() == "done", f"these succeeded: {done.stdout}"
    assert token.read_text() == "file secret"


def test_a_denied_path_given_through_a_link_hides_what_it_leads_to(box: Box) -> None:
    (real,) = _folders(box, "real")
    _owned_file(box, real / "key", "linked secret")
    (box.work / "link").symlink_to(real)
    done = box.sh(f"cat {box.work}/link/key; cat {real}/key; echo done", read=None, deny=[str(box.work / "link")])
    assert done.stdout.strip() == "done"
    assert "linked secret" not in done.stdout


def test_root_only_secrets_are_unreadable(box: Box) -> None:
    done = box.sh("cat /etc/shadow || cat /etc/gshadow || echo refused", read=None)
    assert done.stdout.strip() == "refused", done.stdout
    assert done.stderr.count("Permission denied") == 2, done.stderr


def test_the_host_tmp_is_not_visible(box: Box) -> None:
    with open("/tmp/mcpshield-bwrap-host-file", "w") as marker:
        marker.write("host")
    try:
        done = box.sh("cat /tmp/mcpshield-bwrap-host-file; echo x > /tmp/own && cat /tmp/own", read=None)
    finally:
        os.unlink("/tmp/mcpshield-bwrap-host-file")
    assert done.stdout.strip() == "x"


def test_remounting_root_writable_fails(box: Box) -> None:
    script = (
        "mount -o remount,rw / 2>/dev/null && echo remounted\n"
        "touch /remounted 2>/dev/null && echo wrote\n"
        "mount -t tmpfs none /tmp 2>/dev/null && echo mounted\n"
        "echo done"
    )
    for read in (None, ()):
        done = box.sh(script, read=read)
        assert done.stdout.strip() == "done", f"these succeeded: {done.stdout}"
    assert not os.path.exists("/remounted")


def test_network_false_makes_a_tcp_connect_to_a_loopback_listener_fail(box: Box) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            f"try:\n socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')\n"
            "except OSError as e:\n print('refused', e.errno)"
        )
        closed = box.python(code, network=False)
        opened = box.python(code, network=True)
    assert closed.stdout.startswith("refused"), (closed.stdout, closed.stderr)
    assert opened.stdout.strip() == "connected", (opened.stdout, opened.stderr)


def test_a_host_list_reaches_the_proxy_socket_and_nothing_else(box: Box) -> None:
    (folder,) = _folders(box, "proxy")
    path = str(folder / "proxy.sock")
    with socket.socket(socket.AF_UNIX) as proxy, socket.create_server(("127.0.0.1", 0)) as other:
        proxy.bind(path)
        os.chown(path, box.who.uid, box.who.gid)
        proxy.listen(1)
        proxy.settimeout(RUN_TIMEOUT_S)
        greeter = threading.Thread(target=_greet_once, args=(proxy,), daemon=True)
        greeter.start()
        code = (
            "import socket\n"
            f"s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect({path!r}); print(s.recv(16).decode())\n"
            f"try:\n socket.create_connection(('127.0.0.1', {other.getsockname()[1]}), timeout=5); print('tcp')\n"
            "except OSError:\n print('no tcp')"
        )
        done = box.python(code, network=["example.org"], proxy=path, read=[])
        greeter.join(RUN_TIMEOUT_S)
    assert done.stdout.split() == ["proxy", "no", "tcp"], (done.stdout, done.stderr)


def _greet_once(server: socket.socket) -> None:
    connection, _ = server.accept()
    with connection:
        connection.sendall(b"proxy")


def test_a_write_path_given_through_a_link_is_writable_through_the_link(box: Box) -> None:
    (real,) = _folders(box, "real")
    link = box.work / "link"
    link.symlink_to(real)
    for read in (None, ()):
        done = box.sh(f"cd {link} && pwd && echo hi > {link}/f", read=read, write=[str(link)])
        assert done.returncode == 0, done.stderr
        assert (real / "f").read_text() == "hi\n"


def test_the_server_starts_in_its_working_directory(box: Box) -> None:
    (out,) = _folders(box, "out")
    done = box.sh("pwd", read=[], write=[str(out)], cwd=str(out))
    assert done.stdout.strip() == str(out)


def test_the_sandboxed_tree_dies_when_bwraps_parent_is_killed(box: Box) -> None:
    argv = box.argv(["/bin/sh", "-c", "sleep 600 & echo ready; wait"], read=None)
    spawner = "import subprocess, sys; subprocess.run(sys.argv[1:], check=False)"
    parent = subprocess.Popen(
        [box.who.python, "-c", spawner, *argv], stdout=subprocess.PIPE, env=box.env(), **box.who.popen_options()
    )
    try:
        assert parent.stdout is not None
        assert _read_line(parent.stdout, RUN_TIMEOUT_S) == b"ready\n"
        tree = psutil.Process(parent.pid).children(recursive=True)
        assert any(p.name() == "sleep" for p in tree), [p.name() for p in tree]
        parent.kill()
        parent.wait(EXIT_TIMEOUT_S)
        assert wait_all_gone(tree) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(EXIT_TIMEOUT_S)
        if parent.stdout is not None:
            parent.stdout.close()


def _read_line(stream: IO[bytes], timeout: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line within {timeout} s"
    return stream.readline()


# --- the command line and the mount plan, without running bwrap ---------------------------------


def _argv(spec: SandboxSpec, cwd: str | None = None, proxy: str | None = None) -> list[str]:
    return bwrap_argv(spec, ["true"], system_read=system_read_dirs(), extra_write=(), cwd=cwd, proxy_socket=proxy)


def test_every_sandbox_drops_capabilities_and_dies_with_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCPSHIELD_CACHE_DIR", str(tmp_path))
    argv = _argv(SandboxSpec(network=True))
    assert argv[1 : 1 + len(BASE_FLAGS)] == list(BASE_FLAGS)
    assert argv[argv.index("--cap-drop") : argv.index("--cap-drop") + 2] == ["--cap-drop", "ALL"]
    assert argv[-2:] == ["--", "true"]


def test_only_network_true_keeps_the_hosts_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPSHIELD_CACHE_DIR", str(tmp_path))
    sock = tmp_path / "proxy.sock"
    sock.touch()
    assert "--unshare-net" not in _argv(SandboxSpec(network=True))
    assert "--unshare-net" in _argv(SandboxSpec(network=False))
    assert "--unshare-net" in _argv(SandboxSpec(network=("example.org",)), proxy=str(sock))


def test_a_host_list_without_the_proxy_socket_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPSHIELD_CACHE_DIR", str(tmp_path))
    with pytest.raises(SandboxError, match="socket"):
        _argv(SandboxSpec(network=("example.org",)))


def test_hidden_paths_come_after_every_bind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPSHIELD_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "out" / "secret").mkdir(parents=True)
    argv = _argv(SandboxSpec(read=(), write=(str(tmp_path / "out"),), deny=(str(tmp_path / "out" / "secret"),)))
    last_bind = max(
        i for i, arg in enumerate(argv) if arg in ("--bind", "--ro-bind", "--symlink") and "denied" not in argv[i + 1]
    )
    hide = argv.index(str(tmp_path / "out" / "secret"))
    assert argv[hide - 3 : hide + 1] == ["--perms", "0000", "--tmpfs", str(tmp_path / "out" / "secret")]
    assert hide > last_bind
    assert argv.index("--tmpfs") < argv.index(str(tmp_path / "out"))  # /tmp first, then binds under it


def test_a_missing_write_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="does not exist") as raised:
        _argv(SandboxSpec(write=(str(tmp_path / "missing"),)))
    assert "create it" in raised.value.tip


def test_a_working_directory_the_sandbox_cannot_see_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPSHIELD_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "seen").mkdir()
    (tmp_path / "unseen").mkdir()
    spec = SandboxSpec(read=(str(tmp_path / "seen"),), deny=(str(tmp_path / "seen" / "hidden"),))
    assert _argv(spec, cwd=str(tmp_path / "seen"))[-4:-2] == ["--chdir", str(tmp_path / "seen")]
    for cwd in (tmp_path / "unseen", Path("/root") if os.getuid() else Path("/home")):
        with pytest.raises(SandboxError, match="not visible"):
            _argv(spec, cwd=str(cwd))


def test_merged_usr_links_are_reproduced_as_links() -> None:
    if not os.path.islink("/bin"):
        pytest.skip("/bin is not a link on this machine")
    plan = MountPlan()
    for path in ("/usr", "/bin"):
        plan.expose(path, "ro")
    plan.settle_links()
    assert [(link.dest, link.target) for link in plan.links] == [("/bin", os.readlink("/bin"))]
    assert plan.resolve("/bin/sh") == os.path.realpath("/bin/sh")


def test_a_link_already_visible_from_the_host_needs_no_new_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    plan = MountPlan()
    plan.expose(str(tmp_path), "ro")
    plan.expose(str(tmp_path / "link"), "rw")
    plan.settle_links()
    assert plan.links == []
    assert plan.resolve(str(tmp_path / "link")) == str(tmp_path / "real")
    assert plan.covering(str(tmp_path / "real")) is not None


def test_a_link_the_sandbox_cannot_reproduce_is_refused_naming_the_real_path(tmp_path: Path) -> None:
    (tmp_path / "A").mkdir()
    (tmp_path / "X").mkdir()
    (tmp_path / "Y" / "real").mkdir(parents=True)
    (tmp_path / "X" / "link2").symlink_to(tmp_path / "Y" / "real")
    (tmp_path / "A" / "link1").symlink_to(tmp_path / "X" / "link2")
    plan = MountPlan()
    plan.expose(str(tmp_path / "A"), "ro")
    plan.expose(str(tmp_path / "A" / "link1"), "rw")
    with pytest.raises(SandboxError) as raised:
        plan.settle_links()
    assert str(tmp_path / "Y" / "real") in raised.value.tip


def test_a_read_path_inside_a_write_path_stays_writable(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    plan = MountPlan()
    plan.expose(str(tmp_path), "rw")
    plan.expose(str(tmp_path / "docs"), "ro")
    covering = plan.covering(str(tmp_path / "docs"))
    assert covering is not None and covering.kind == "rw"


def test_a_denied_folder_hides_the_write_paths_beneath_it(tmp_path: Path) -> None:
    (tmp_path / "home" / "proj").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    plan = MountPlan()
    plan.expose(str(tmp_path / "home" / "proj"), "rw")
    plan.settle_links()
    plan.hide(str(tmp_path / "home"))
    plan.hide(str(tmp_path / "elsewhere"))  # not in the sandbox: nothing to hide
    assert [(m.dest, m.target) for m in plan.hidden] == [(str(tmp_path / "home"), "dir")]
    assert not plan.visible(str(tmp_path / "home" / "proj"))


def test_paths_under_bwraps_own_dev_and_proc_are_never_bound(tmp_path: Path) -> None:
    plan = MountPlan()
    for path in ("/dev", "/proc", "/dev/shm", "/proc/self"):
        plan.expose(path, "ro")
        plan.hide(path)
    assert plan.binds == [] and plan.hidden == []
