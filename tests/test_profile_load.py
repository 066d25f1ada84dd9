"""Profiles: loading, error messages, the search path, auto-matching, `extends` and merge."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from mcpshield.errors import ProfileError
from mcpshield.profile.load import (
    CONFIG_DIR_ENV,
    MAX_EXTENDS_DEPTH,
    available,
    load_file,
    load_with_bases,
    match_command,
    no_profile_error,
    resolve,
    shipped_profiles_dir,
)
from mcpshield.profile.merge import merge
from mcpshield.profile.model import Profile

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "profiles").glob("*.toml"))
EXPECTED_SHIPPED = {
    "filesystem", "git", "github", "fetch", "time", "memory", "everything",
    "postgres", "sqlite", "puppeteer", "playwright", "brave-search",
}  # fmt: skip

Write = Callable[[str, str], Path]


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user config dir, so no test sees the real one."""
    config = tmp_path / "config"
    (config / "profiles").mkdir(parents=True)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(config))
    return config / "profiles"


@pytest.fixture
def write(tmp_path: Path) -> Write:
    def write_file(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write_file


def parse(text: str) -> Profile:
    return Profile.model_validate(tomllib.loads(text))


# -- shipped profiles and packaging ---------------------------------------------------------------


def test_the_shipped_profiles_are_the_ones_promised() -> None:
    assert {path.stem for path in SHIPPED} == EXPECTED_SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_profile_loads_denies_unknown_tools_and_says_what_it_matches(path: Path) -> None:
    loaded = load_file(path)
    assert loaded.name == path.stem
    assert loaded.profile.tools.default == "deny"
    assert loaded.profile.server.match
    assert loaded.profile.server.description
    listed = (*loaded.profile.tools.allow, *loaded.profile.tools.ask, *loaded.profile.tools.deny)
    assert len(listed) == len(set(listed)), "a tool sits in two lists"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_tool_in_a_shipped_profile_has_a_comment_saying_why(path: Path) -> None:
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.fullmatch(r'\s+"[^"]+",', line):
            above = lines[number - 1].strip()
            assert above.startswith("#") or re.fullmatch(r'"[^"]+",', above), f"{path.name}:{number + 1}"


def test_shipped_profiles_are_found_through_the_installed_package(user_dir: Path) -> None:
    assert shipped_profiles_dir().resolve() == (ROOT / "profiles").resolve()
    assert {entry.name for entry in available()} == EXPECTED_SHIPPED


def test_every_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "mcpshield").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert set(config["packages"]) == found | {"mcpshield.profiles"}
    assert config["package-dir"] == {"mcpshield.profiles": "profiles"}


# -- error messages -------------------------------------------------------------------------------

MALFORMED = [
    # (what, file text, expected "line: key: what" part of the message)
    ("bad TOML", '[tools]\ndefault = "deny\n', r":2:\d+: invalid TOML: "),
    (
        "unknown key",
        '[server]\nname = "x"\n\n[tools]\ndefualt = "deny"\n',
        r":5: tools\.defualt: unknown key `defualt` \(did you mean `default`\?\)",
    ),
    ("unknown section", '[tool]\ndefault = "deny"\n', r":1: tool: unknown key `tool` \(did you mean `tools`\?\)"),
    (
        "bad action",
        '[tools]\ndefault = "maybe"\n',
        r':2: tools\.default: must be one of allow, ask, deny \(got "maybe"\)',
    ),
    (
        "bad rule action",
        '[[rules]]\ntool = "a"\naction = "deny"\n\n[[rules]]\ntool = "b"\naction = "nope"\n',
        r":7: rules\[2\]\.action: must be one of allow, ask, deny",
    ),
    (
        "bad regex",
        '[[rules]]\ntool = "a"\naction = "deny"\n[rules.args.path]\nmatches = ["(open"]\n',
        r":5: rules\[1\]\.args\.path\.matches: '\(open' is not a valid regular expression",
    ),
    (
        "bad type in a rule",
        '[[rules]]\ntool = "a"\naction = "deny"\n[rules.args.n]\nmax_length = "ten"\n',
        r':5: rules\[1\]\.args\.n\.max_length: must be a valid integer.*\(got "ten"\)',
    ),
    ("missing action", '[tools]\n\n[[rules]]\ntool = "a"\n', r":3: rules\[1\]\.action: required key is missing"),
    (
        "empty condition",
        '[[rules]]\ntool = "a"\naction = "deny"\n[rules.args.p]\n',
        r":4: rules\[1\]\.args\.p: names no",
    ),
    ("bad list element", '[tools]\nallow = ["a", 3]\n', r":2: tools\.allow\[2\]: must be a valid string \(got 3\)"),
    ("bad limit", "[limits]\ncalls_per_minute = 0\n", r":2: limits\.calls_per_minute: must be greater than 0"),
]


@pytest.mark.parametrize(("what", "text", "expected"), MALFORMED, ids=[case[0] for case in MALFORMED])
def test_a_malformed_profile_is_one_line_with_file_line_and_key_and_a_tip(
    what: str, text: str, expected: str, write: Write
) -> None:
    path = write("x.toml", text)
    with pytest.raises(ProfileError) as caught:
        load_file(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path) + ":")
    assert re.search(expected, message), message
    assert caught.value.tip


def test_the_first_problem_by_line_is_reported_and_the_rest_counted(write: Write) -> None:
    path = write("x.toml", '[tools]\ndefault = "maybe"\nalow = []\n\n[limits]\nmax_concurrent = -1\n')
    with pytest.raises(ProfileError, match=r":2: tools\.default: .*\(and 2 more problems\)$"):
        load_file(path)


def test_an_error_in_a_later_rules_args_table_points_at_its_own_line(write: Write) -> None:
    text = '[[rules]]\ntool = "a"\naction = "deny"\n[rules.args.path]\nwithin = ["/x"]\n\n'
    text += '[[rules]]\ntool = "b"\naction = "deny"\n[rules.args.path]\nwithin = "/y"\nhosts = [1]\n'
    with pytest.raises(ProfileError, match=r":12: rules\[2\]\.args\.path\.hosts\[1\]: "):
        load_file(write("x.toml", text))


def test_keys_inside_a_multiline_string_are_not_mistaken_for_keys(write: Write) -> None:
    text = '[server]\ndescription = """\ndefault = "x"\n"""\n\n[tools]\ndefault = "maybe"\n'
    with pytest.raises(ProfileError, match=r":7: tools\.default: "):
        load_file(write("x.toml", text))


def test_a_file_that_is_not_utf8_is_refused(write: Write) -> None:
    path = write("x.toml", "")
    path.write_bytes(b'[server]\nname = "\xff"\n')
    with pytest.raises(ProfileError, match="not UTF-8"):
        load_file(path)


# -- the search path ------------------------------------------------------------------------------


def test_none_means_no_profile(user_dir: Path) -> None:
    assert resolve("none") is None


def test_a_path_names_that_file(user_dir: Path, write: Write) -> None:
    path = write("somewhere/mine.toml", '[tools]\ndefault = "allow"\n')
    loaded = resolve(str(path))
    assert loaded is not None
    assert (loaded.name, loaded.source, loaded.profile.tools.default) == ("mine", str(path), "allow")


def test_a_missing_path_is_an_error_with_a_tip(user_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such profile file") as caught:
        resolve(str(tmp_path / "nothing.toml"))
    assert "profile list" in caught.value.tip


def test_a_name_finds_a_shipped_profile(user_dir: Path) -> None:
    loaded = resolve("time")
    assert loaded is not None
    assert Path(loaded.source) == shipped_profiles_dir() / "time.toml"


def test_a_user_profile_shadows_the_shipped_one_of_the_same_name(user_dir: Path) -> None:
    (user_dir / "time.toml").write_text('[tools]\ndefault = "ask"\n')
    loaded = resolve("time")
    assert loaded is not None
    assert (loaded.source, loaded.profile.tools.default) == (str(user_dir / "time.toml"), "ask")
    shadowed = [entry for entry in available() if entry.name == "time"]
    assert [(e.tier, e.shadowed) for e in shadowed] == [("user", False), ("shipped", True)]


def test_an_unknown_name_lists_what_exists_and_points_to_profile_list(user_dir: Path) -> None:
    with pytest.raises(ProfileError, match=r"no profile named 'nope'.*available: .*filesystem") as caught:
        resolve("nope")
    assert "mcpshield profile list" in caught.value.tip


def test_a_name_with_path_tricks_is_refused(user_dir: Path) -> None:
    with pytest.raises(ProfileError, match="neither a profile name nor a path"):
        resolve("..")


# -- auto-matching --------------------------------------------------------------------------------


def test_run_without_profile_picks_the_shipped_profile_by_command_line(user_dir: Path) -> None:
    cases = {
        ("npx", "-y", "@modelcontextprotocol/server-filesystem", "/home/me"): "filesystem",
        ("/usr/bin/npx", "-y", "@modelcontextprotocol/server-github"): "github",
        ("uvx", "mcp-server-git", "--repository", "."): "git",
        ("/home/me/.venv/bin/mcp-server-time",): "time",
        ("node", "/x/node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"): "everything",
        ("npx", "@playwright/mcp@latest"): "playwright",
    }
    for argv, name in cases.items():
        loaded = match_command(argv)
        assert loaded is not None and loaded.name == name, argv


def test_the_longest_matching_pattern_wins(user_dir: Path) -> None:
    # "mcp-server-git" is a substring of "mcp-server-github": the longer pattern decides.
    loaded = match_command(["/usr/local/bin/mcp-server-github"])
    assert loaded is not None and loaded.name == "github"


def test_a_user_profile_beats_a_shipped_one_even_with_a_shorter_pattern(user_dir: Path) -> None:
    (user_dir / "mine.toml").write_text('[server]\nmatch = ["git"]\n')
    loaded = match_command(["uvx", "mcp-server-git"])
    assert loaded is not None and loaded.name == "mine"


def test_two_profiles_tied_at_the_top_are_an_error_naming_both(user_dir: Path) -> None:
    (user_dir / "one.toml").write_text('[server]\nmatch = ["my-server"]\n')
    (user_dir / "two.toml").write_text('[server]\nmatch = ["server-x1"]\n')
    with pytest.raises(ProfileError, match=r"one\.toml and .*two\.toml|two\.toml and .*one\.toml") as caught:
        match_command(["my-server-x1"])
    assert "--profile" in caught.value.tip


def test_a_glob_pattern_matches_a_single_argument(user_dir: Path) -> None:
    (user_dir / "mine.toml").write_text('[server]\nmatch = ["*/bin/my-*"]\n')
    loaded = match_command(["/opt/bin/my-server"])
    assert loaded is not None and loaded.name == "mine"
    assert match_command(["/opt/bin", "my-server"]) is None


def test_no_match_is_none_and_run_gets_an_error_with_every_way_forward(user_dir: Path) -> None:
    assert match_command(["python", "my_server.py", "--token", "s3cret"]) is None
    err = no_profile_error(["python", "my_server.py", "--token", "s3cret"])
    assert "no profile matches this server's command" in str(err)
    assert "s3cret" not in str(err) + err.tip
    for way in ("mcpshield profile init NAME", "--profile NAME", "--profile none"):
        assert way in err.tip


def test_a_malformed_profile_is_reported_while_auto_matching_not_skipped(user_dir: Path) -> None:
    (user_dir / "broken.toml").write_text('[tools]\ndefault = "maybe"\n')
    with pytest.raises(ProfileError, match=r"broken\.toml:2: tools\.default"):
        match_command(["uvx", "mcp-server-time"])


# -- extends --------------------------------------------------------------------------------------


def test_a_user_profile_extending_its_own_name_gets_the_shipped_one(user_dir: Path) -> None:
    (user_dir / "filesystem.toml").write_text('extends = "filesystem"\n\n[tools]\ndeny = ["write_file"]\n')
    chain = load_with_bases(user_dir / "filesystem.toml")
    assert [Path(p.source) for p in chain] == [shipped_profiles_dir() / "filesystem.toml", user_dir / "filesystem.toml"]
    loaded = chain[-1]
    assert len(loaded.chain) == 2
    assert loaded.chain[0] == load_file(shipped_profiles_dir() / "filesystem.toml").profile
    assert "write_file" in loaded.profile.tools.deny
    assert "read_text_file" in loaded.profile.tools.allow
    assert loaded.profile.server.match == ()  # match is never inherited


def test_extends_a_path_relative_to_the_extending_file(user_dir: Path, write: Write) -> None:
    write("bases/base.toml", '[tools]\ndefault = "ask"\nallow = ["a"]\n')
    path = write("top.toml", 'extends = "bases/base.toml"\n[tools]\nallow = ["b"]\n')
    loaded = load_file(path)
    assert loaded.profile.tools.allow == ("a", "b")
    assert loaded.profile.tools.default == "ask"


def test_an_extends_cycle_is_an_error_at_the_extends_line(user_dir: Path, write: Write) -> None:
    write("a.toml", 'extends = "./b.toml"\n')
    write("b.toml", '# b\nextends = "./a.toml"\n')
    with pytest.raises(ProfileError, match=r"\.toml:\d: extends: extends itself in a cycle"):
        load_file(write("start.toml", 'extends = "./a.toml"\n'))


def test_a_profile_extending_itself_by_path_is_a_cycle(write: Write, user_dir: Path) -> None:
    with pytest.raises(ProfileError, match="cycle"):
        load_file(write("self.toml", 'extends = "self.toml"\n'))


def test_a_missing_base_is_an_error_naming_it(user_dir: Path, write: Write) -> None:
    with pytest.raises(ProfileError, match=r"x\.toml:2: extends: extends 'nothing-here', and no such profile exists"):
        load_file(write("x.toml", '# top\nextends = "nothing-here"\n'))
    with pytest.raises(ProfileError, match="which does not exist"):
        load_file(write("y.toml", 'extends = "./missing.toml"\n'))


def test_a_chain_deeper_than_the_bound_is_refused(user_dir: Path, write: Write) -> None:
    write("p0.toml", "[tools]\n")
    for level in range(1, MAX_EXTENDS_DEPTH + 2):
        write(f"p{level}.toml", f'extends = "./p{level - 1}.toml"\n')
    assert (
        len(load_file(write("ok.toml", f'extends = "./p{MAX_EXTENDS_DEPTH - 1}.toml"\n')).chain)
        == MAX_EXTENDS_DEPTH + 1
    )
    with pytest.raises(ProfileError, match=f"more than {MAX_EXTENDS_DEPTH} profiles deep"):
        load_file(write("deep.toml", f'extends = "./p{MAX_EXTENDS_DEPTH + 1}.toml"\n'))


def test_each_chain_element_is_merged_with_the_ones_before(user_dir: Path, write: Write) -> None:
    write("a.toml", '[tools]\nallow = ["a"]\n')
    write("b.toml", 'extends = "./a.toml"\n[tools]\nallow = ["b"]\n')
    loaded = load_file(write("c.toml", 'extends = "./b.toml"\n[tools]\nallow = ["c"]\n'))
    assert [p.tools.allow for p in loaded.chain] == [("a",), ("a", "b"), ("a", "b", "c")]


# -- merge ----------------------------------------------------------------------------------------


def test_merge_takes_the_extenders_single_keys_only_where_its_file_sets_them() -> None:
    base = parse('[server]\nname = "b"\ndescription = "base"\n[tools]\ndefault = "allow"\nstrict_args = false\n')
    assert merge(base, parse("[tools]\n")).tools.default == "allow"
    assert merge(base, parse('[tools]\ndefault = "deny"\n')).tools.default == "deny"
    assert merge(base, parse("")).tools.strict_args is False
    assert merge(base, parse("[tools]\nstrict_args = true\n")).tools.strict_args is True
    server = merge(base, parse('[server]\nname = "e"\n')).server
    assert (server.name, server.description) == ("e", "base")


def test_merge_never_inherits_match() -> None:
    base = parse('[server]\nmatch = ["base-server"]\n')
    assert merge(base, parse("")).server.match == ()
    assert merge(base, parse('[server]\nmatch = ["mine"]\n')).server.match == ("mine",)


def test_merge_unites_tool_resource_and_prompt_lists_base_first_without_repeats() -> None:
    base = parse('[tools]\nallow = ["a", "b"]\ndeny = ["x"]\n[resources]\ndeny = ["file:///etc/*"]\n')
    merged = merge(base, parse('[tools]\nallow = ["b", "c"]\nask = ["d"]\n[prompts]\ndefault = "deny"\n'))
    assert (merged.tools.allow, merged.tools.ask, merged.tools.deny) == (("a", "b", "c"), ("d",), ("x",))
    assert merged.resources.deny == ("file:///etc/*",)
    assert (merged.prompts.default, merged.resources.default) == ("deny", "allow")


def test_merge_puts_the_extenders_rules_first() -> None:
    base = parse('[[rules]]\ntool = "base"\naction = "deny"\n')
    merged = merge(base, parse('[[rules]]\ntool = "ext"\naction = "allow"\n'))
    assert [rule.tool for rule in merged.rules] == [("ext",), ("base",)]


def test_merge_takes_each_server_request_key_from_the_extender_where_set() -> None:
    base = parse('[server_requests]\nsampling = "deny"\nroots = "deny"\n')
    merged = merge(base, parse('[server_requests]\nroots = "allow"\n')).server_requests
    assert (merged.sampling, merged.roots, merged.elicitation) == ("deny", "allow", "allow")


def test_merge_keeps_the_smaller_limit() -> None:
    base = parse('[limits]\ncalls_per_minute = 10\n[limits.tools]\n"w*" = 5\n"r*" = 50\n')
    merged = merge(
        base,
        parse('[limits]\ncalls_per_minute = 60\nmax_concurrent = 2\n[limits.tools]\n"w*" = 9\n"r*" = 20\n"x" = 1\n'),
    ).limits
    assert (merged.calls_per_minute, merged.max_concurrent) == (10, 2)
    assert merged.tools == {"w*": 5, "r*": 20, "x": 1}
    assert merged.identical_calls_per_minute == 20
    assert merge(base, parse("[limits]\nidentical_calls_per_minute = 5\n")).limits.identical_calls_per_minute == 5


def test_merge_keeps_the_extenders_extends() -> None:
    assert merge(parse('extends = "a"\n'), parse('extends = "b"\n')).extends == "b"
