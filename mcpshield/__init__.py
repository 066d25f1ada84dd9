"""mcpshield: a security boundary around local stdio MCP servers."""

__version__ = "0.1.0"
