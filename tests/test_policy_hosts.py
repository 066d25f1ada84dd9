"""Tier 1: `hosts` conditions against the spellings of an address that reach the same machine,
CIDR entries, and the shipped profiles' private and metadata destinations."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from mcpshield.policy.args import CompiledArgs, compile_conditions
from mcpshield.profile.model import ArgCondition, Profile

ROOT = Path(__file__).resolve().parent.parent


def _hosts(action: str, *hosts: str) -> CompiledArgs:
    return compile_conditions({"url": ArgCondition(hosts=hosts)}, action)


def _applies(rule: CompiledArgs, url: object) -> bool:
    return rule.check({"url": url}) is None


# -- IPv6 addresses that carry an IPv4 one ------------------------------------------------

METADATA_SPELLINGS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[0:0:0:0:0:ffff:169.254.169.254]/",
    "http://[::169.254.169.254]/",
    "http://[64:ff9b::169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
]


@pytest.mark.parametrize("url", METADATA_SPELLINGS)
def test_a_deny_rule_about_an_ipv4_host_catches_every_ipv6_spelling_of_it(url: str) -> None:
    assert _applies(_hosts("deny", "169.254.169.254"), url)


@pytest.mark.parametrize("url", METADATA_SPELLINGS)
def test_a_deny_rule_about_an_ipv4_range_catches_every_ipv6_spelling_of_an_address_in_it(url: str) -> None:
    assert _applies(_hosts("deny", "169.254.0.0/16"), url)


def test_an_ipv6_spelling_of_loopback_is_caught_by_a_rule_about_127_0_0_1() -> None:
    deny = _hosts("deny", "127.0.0.1")
    assert _applies(deny, "http://[::ffff:127.0.0.1]:8080/")
    assert _applies(deny, "http://[::ffff:7f00:1]/")
    assert _applies(deny, "http://[::127.0.0.1]/")
    assert not _applies(deny, "http://[::ffff:7f00:2]/")


def test_a_rule_about_the_nat64_prefix_itself_still_sees_the_ipv6_form() -> None:
    assert _applies(_hosts("deny", "64:ff9b::/96"), "http://[64:ff9b::a9fe:a9fe]/")


def test_an_allow_rule_holds_an_ipv6_spelling_only_if_both_forms_are_allowed() -> None:
    only_v4 = _hosts("allow", "10.0.0.0/8")
    assert not _applies(only_v4, "http://[::ffff:10.0.0.1]/")
    both = _hosts("allow", "10.0.0.0/8", "::ffff:0:0/96")
    assert _applies(both, "http://[::ffff:10.0.0.1]/")


def test_the_ipv6_loopback_and_unspecified_addresses_stay_ipv6() -> None:
    deny = _hosts("deny", "0.0.0.0/8", "127.0.0.0/8")
    assert not _applies(deny, "http://[::1]/")
    assert not _applies(deny, "http://[::]/")
    assert _applies(_hosts("deny", "::1", "::"), "http://[::]/")


def test_a_refusal_names_the_ipv4_address_an_ipv6_host_carries() -> None:
    mismatch = _hosts("allow", "example.com").check({"url": "http://[::ffff:169.254.169.254]/"})
    assert mismatch is not None
    assert "169.254.169.254" in mismatch.message


# -- numeric IPv4 forms -------------------------------------------------------------------

NUMERIC_LOOPBACK = [
    "http://2130706433/",
    "http://0x7f.1/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://0x7f000001/",
    "http://0x7F.0.0.1/",
    "http://017700000001/",
]


@pytest.mark.parametrize("url", NUMERIC_LOOPBACK)
def test_numeric_ipv4_forms_other_than_a_dotted_quad_are_refused_by_allow_and_caught_by_deny(url: str) -> None:
    assert not _applies(_hosts("allow", "127.0.0.0/8", "*"), url)
    assert _applies(_hosts("deny", "127.0.0.1"), url)


# -- CIDR entries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("http://10.1.2.3/", True),
        ("http://10.255.255.255:8080/", True),
        ("http://11.0.0.1/", False),
        ("http://[fd12:3456::1]/", True),
        ("http://[fe80::1]/", False),
        ("http://ten.example/", False),
    ],
)
def test_a_cidr_entry_matches_the_addresses_inside_it(url: str, inside: bool) -> None:
    assert _applies(_hosts("allow", "10.0.0.0/8", "fd00::/8"), url) is inside


def test_a_cidr_entry_sits_beside_host_names_and_globs() -> None:
    allow = _hosts("allow", "192.168.0.0/16", "*.example.com", "example.com")
    assert _applies(allow, "https://a.example.com/")
    assert _applies(allow, "https://example.com/")
    assert _applies(allow, "http://192.168.1.1/")
    assert not _applies(allow, "http://192.169.1.1/")


@pytest.mark.parametrize(
    "entry", ["10.0.0.0/33", "10.0.0.1/8", "fd00::1/8", "10.0.0.0/", "10.0.0/8", "*.10.0.0.0/8", "[fd00::]/8", "x/8"]
)
def test_a_bad_cidr_entry_is_a_profile_error_naming_the_entry(entry: str) -> None:
    with pytest.raises(ValidationError, match="hosts") as err:
        ArgCondition(hosts=(entry,))
    assert repr(entry) in str(err.value)


def test_a_bad_cidr_in_a_profile_file_is_reported_with_its_line_and_key(tmp_path: Path) -> None:
    from mcpshield.errors import ProfileError
    from mcpshield.profile.load import load_file

    path = tmp_path / "bad.toml"
    path.write_text('[[rules]]\ntool = "f"\naction = "deny"\n[rules.args.url]\nhosts = ["10.0.0.0/40"]\n')
    with pytest.raises(ProfileError, match=r"bad.toml:5: rules\[1\]\.args\.url\.hosts: '10\.0\.0\.0/40'"):
        load_file(path)


# -- the shipped profiles -----------------------------------------------------------------

PRIVATE_AND_METADATA = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://169.254.170.2/v2/credentials",
    "http://100.100.100.200/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://metadata.google.internal/",
]
LOOPBACK_AND_PRIVATE = [
    "http://127.0.0.1/",
    "http://127.0.0.2:8080/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::1]/",
    "http://[::]/",
    "http://0.0.0.0/",
    "http://10.0.0.5/",
    "http://172.16.3.4/",
    "http://192.168.1.1/",
    "http://[fd12::1]/",
    "http://[fe80::1]/",
    "http://2130706433/",
    "http://localhost/",
    "http://db.internal/",
]
PUBLIC = ["https://example.com/", "http://93.184.215.14/", "http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/"]


def _shipped_rule(name: str, tool: str) -> CompiledArgs:
    profile = Profile.model_validate(tomllib.loads((ROOT / "profiles" / f"{name}.toml").read_text()))
    (rule,) = [rule for rule in profile.rules if tool in rule.tool and "url" in rule.args]
    return compile_conditions(rule.args, rule.action)


@pytest.mark.parametrize(
    ("name", "tool"), [("fetch", "fetch"), ("puppeteer", "puppeteer_navigate"), ("playwright", "browser_navigate")]
)
def test_the_shipped_browsing_profiles_refuse_every_spelling_of_a_metadata_host(name: str, tool: str) -> None:
    rule = _shipped_rule(name, tool)
    assert [url for url in PRIVATE_AND_METADATA if not _applies(rule, url)] == []
    assert [url for url in PUBLIC if _applies(rule, url)] == []


def test_the_shipped_fetch_profile_refuses_loopback_private_and_link_local_ranges() -> None:
    rule = _shipped_rule("fetch", "fetch")
    assert [url for url in LOOPBACK_AND_PRIVATE if not _applies(rule, url)] == []


@pytest.mark.parametrize(("name", "tool"), [("puppeteer", "puppeteer_navigate"), ("playwright", "browser_navigate")])
def test_the_shipped_browser_profiles_leave_localhost_to_ask(name: str, tool: str) -> None:
    rule = _shipped_rule(name, tool)
    assert not _applies(rule, "http://localhost:3000/")
    assert not _applies(rule, "http://127.0.0.1:3000/")
