"""Profiles: what one server may do, loaded from TOML into frozen models."""

from mcpshield.profile.model import (
    Action,
    ArgCondition,
    LimitsSection,
    LoadedProfile,
    NamedSection,
    Profile,
    Rule,
    ServerRequestsSection,
    ServerSection,
    ToolsSection,
)

__all__ = [
    "Action",
    "ArgCondition",
    "LimitsSection",
    "LoadedProfile",
    "NamedSection",
    "Profile",
    "Rule",
    "ServerRequestsSection",
    "ServerSection",
    "ToolsSection",
]
